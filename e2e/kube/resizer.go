package main

// The resizer of the provisioner's volumes: what a CSI driver's
// external-resizer does for its volumes. The controller-manager's expand
// controller leaves a `local` PersistentVolume to "an external controller";
// this is that controller. A claim whose request grew (the API server's
// PersistentVolumeClaimResize admission has already checked that its
// StorageClass allows expansion) gets its PersistentVolume's capacity
// raised, then its own status.capacity: a directory has no file system of
// its own to grow on the node, so the resize is done once both say the new
// size, like a driver whose volumes need no node expansion.

import (
	"context"
	"encoding/json"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"
)

func runResizer(ctx context.Context, client kubernetes.Interface) {
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	for {
		if err := resizeOnce(ctx, client); err != nil && ctx.Err() == nil {
			klog.ErrorS(err, "resizing volumes")
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func resizeOnce(ctx context.Context, client kubernetes.Interface) error {
	claims, err := client.CoreV1().PersistentVolumeClaims("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for i := range claims.Items {
		pvc := &claims.Items[i]
		if pvc.Status.Phase != v1.ClaimBound || pvc.Spec.VolumeName == "" {
			continue
		}
		want, ok := pvc.Spec.Resources.Requests[v1.ResourceStorage]
		if !ok {
			continue
		}
		have := pvc.Status.Capacity[v1.ResourceStorage]
		if want.Cmp(have) <= 0 {
			continue
		}
		pv, err := client.CoreV1().PersistentVolumes().Get(ctx, pvc.Spec.VolumeName, metav1.GetOptions{})
		if err != nil {
			klog.ErrorS(err, "reading the volume of a claim to resize", "claim", klog.KObj(pvc))
			continue
		}
		if path, ok := pv.Annotations[pathAnnotation]; !ok || pv.Spec.Local == nil || pv.Spec.Local.Path != path {
			continue // not one of ours
		}
		if pvCapacity := pv.Spec.Capacity[v1.ResourceStorage]; pvCapacity.Cmp(want) < 0 {
			patch, _ := json.Marshal(map[string]any{"spec": map[string]any{"capacity": map[string]string{"storage": want.String()}}})
			if _, err := client.CoreV1().PersistentVolumes().Patch(ctx, pv.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
				klog.ErrorS(err, "growing a volume", "volume", pv.Name)
				continue
			}
		}
		patch, _ := json.Marshal(map[string]any{"status": map[string]any{
			"capacity":   map[string]string{"storage": want.String()},
			"conditions": nil,
		}})
		if _, err := client.CoreV1().PersistentVolumeClaims(pvc.Namespace).Patch(ctx, pvc.Name, types.MergePatchType, patch, metav1.PatchOptions{}, "status"); err != nil {
			klog.ErrorS(err, "recording a claim's new capacity", "claim", klog.KObj(pvc))
			continue
		}
		klog.InfoS("volume resized", "claim", klog.KObj(pvc), "volume", pv.Name, "from", have.String(), "to", want.String())
	}
	return nil
}
