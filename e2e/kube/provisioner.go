package main

// A dynamic provisioner of node-local volumes for the single-node test
// cluster, on the Kubernetes SIG Storage provisioner library.
//
// The controller-manager's built-in host-path provisioner makes root-owned
// 0750 directories, and the kubelet never applies fsGroup to hostPath
// volumes, so a pod running as uid 999 (postgres) could not write to its
// volume. This one makes `local` PersistentVolumes instead: the kubelet
// applies fsGroup to them as it does to a cloud disk, and each volume is
// pinned to the node the scheduler chose (the StorageClass binds on first
// consumer), exactly like a zonal disk.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v13/controller"
)

const pathAnnotation = "ordinal.dev/local-path"

type localProvisioner struct {
	root string
}

func (p *localProvisioner) Provision(_ context.Context, opts controller.ProvisionOptions) (*v1.PersistentVolume, controller.ProvisioningState, error) {
	if opts.SelectedNodeName == "" {
		return nil, controller.ProvisioningFinished, errors.New("the StorageClass must bind on first consumer (volumeBindingMode: WaitForFirstConsumer): a local volume lives on one node")
	}
	if opts.PVC.Spec.VolumeMode != nil && *opts.PVC.Spec.VolumeMode == v1.PersistentVolumeBlock {
		return nil, controller.ProvisioningFinished, errors.New("block volumes are not supported")
	}
	path := filepath.Join(p.root, opts.PVName)
	if err := os.MkdirAll(path, 0o755); err != nil {
		return nil, controller.ProvisioningFinished, fmt.Errorf("creating %s: %w", path, err)
	}
	// The kubelet changes the group to the pod's fsGroup and makes the
	// directory group-writable when it mounts it.
	if err := os.Chmod(path, 0o755); err != nil {
		return nil, controller.ProvisioningFinished, fmt.Errorf("chmod %s: %w", path, err)
	}
	reclaim := v1.PersistentVolumeReclaimDelete
	if opts.StorageClass.ReclaimPolicy != nil {
		reclaim = *opts.StorageClass.ReclaimPolicy
	}
	pv := &v1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{
			Name:        opts.PVName,
			Annotations: map[string]string{pathAnnotation: path},
		},
		Spec: v1.PersistentVolumeSpec{
			PersistentVolumeReclaimPolicy: reclaim,
			AccessModes:                   opts.PVC.Spec.AccessModes,
			Capacity:                      v1.ResourceList{v1.ResourceStorage: opts.PVC.Spec.Resources.Requests[v1.ResourceStorage]},
			MountOptions:                  opts.StorageClass.MountOptions,
			PersistentVolumeSource: v1.PersistentVolumeSource{
				Local: &v1.LocalVolumeSource{Path: path},
			},
			NodeAffinity: &v1.VolumeNodeAffinity{
				Required: &v1.NodeSelector{
					NodeSelectorTerms: []v1.NodeSelectorTerm{{
						MatchExpressions: []v1.NodeSelectorRequirement{{
							Key:      v1.LabelHostname,
							Operator: v1.NodeSelectorOpIn,
							Values:   []string{opts.SelectedNodeName},
						}},
					}},
				},
			},
		},
	}
	return pv, controller.ProvisioningFinished, nil
}

func (p *localProvisioner) Delete(_ context.Context, pv *v1.PersistentVolume) error {
	path, ok := pv.Annotations[pathAnnotation]
	if !ok || pv.Spec.Local == nil || pv.Spec.Local.Path != path {
		return &controller.IgnoredError{Reason: "not provisioned by this provisioner"}
	}
	// Only ever a directory this provisioner made directly under its root.
	if filepath.Dir(path) != p.root {
		return fmt.Errorf("refusing to delete %s: not directly under %s", path, p.root)
	}
	return os.RemoveAll(path)
}

func runProvisioner(args []string) int {
	fs := flag.NewFlagSet("provisioner", flag.ContinueOnError)
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig of the cluster")
	name := fs.String("name", "ordinal.dev/local-path", "provisioner name, as in the StorageClass")
	root := fs.String("root", "", "directory that holds the volumes")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *root == "" {
		fmt.Fprintln(os.Stderr, "provisioner: --root is required")
		return 2
	}
	rootPath, err := filepath.Abs(*root)
	if err != nil {
		fmt.Fprintln(os.Stderr, "provisioner:", err)
		return 1
	}
	if err := os.MkdirAll(rootPath, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "provisioner:", err)
		return 1
	}
	config, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		fmt.Fprintln(os.Stderr, "provisioner:", err)
		return 1
	}
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		fmt.Fprintln(os.Stderr, "provisioner:", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	pc := controller.NewProvisionController(ctx, client, *name, &localProvisioner{root: rootPath},
		controller.LeaderElection(false),
	)
	klog.InfoS("provisioning local volumes", "name", *name, "root", rootPath)
	go runResizer(ctx, client)
	pc.Run(ctx)
	return 0
}
