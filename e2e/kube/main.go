// Command ordinal-kube is every process of the test cluster in one binary,
// the way hyperkube used to ship Kubernetes: `ordinal-kube apiserver …`,
// `ordinal-kube kubelet …`, and so on. One binary links once instead of
// nine times, which is most of a cold build's time on a small machine.
// Invoked through a link named after a component (kubectl, etcd), it runs
// that component.
//
// Nothing here changes what the components do: each entry point is the
// upstream command's own constructor, as in its cmd/*/main.go.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	_ "time/tzdata" // CronJob time zones, as in kube-apiserver's main

	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	"k8s.io/kubectl/pkg/cmd"
	"k8s.io/kubectl/pkg/cmd/util"

	_ "k8s.io/client-go/plugin/pkg/client/auth"

	"go.etcd.io/etcd/server/v3/etcdmain"

	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

var commands = map[string]func(args []string) int{
	"kube-apiserver": func(args []string) int {
		c := apiserver.NewAPIServerCommand()
		c.SetArgs(args)
		return cli.Run(c)
	},
	"kube-controller-manager": func(args []string) int {
		c := controllermanager.NewControllerManagerCommand()
		c.SetArgs(args)
		return cli.Run(c)
	},
	"kube-scheduler": func(args []string) int {
		c := scheduler.NewSchedulerCommand()
		c.SetArgs(args)
		return cli.Run(c)
	},
	"kubelet": func(args []string) int {
		c := kubelet.NewKubeletCommand(context.Background())
		c.SetArgs(args)
		return cli.Run(c)
	},
	"kube-proxy": func(args []string) int {
		c := proxy.NewProxyCommand()
		c.SetArgs(args)
		return cli.Run(c)
	},
	"kubectl": func(args []string) int {
		logs.GlogSetter(cmd.GetLogVerbosity(append([]string{"kubectl"}, args...))) // nolint:errcheck
		c := cmd.NewDefaultKubectlCommand()
		c.SetArgs(args)
		if err := cli.RunNoErrOutput(c); err != nil {
			util.CheckErr(err)
		}
		return 0
	},
	"etcd": func(args []string) int {
		etcdmain.Main(append([]string{"etcd"}, args...))
		return 0
	},
	"coredns": func(args []string) int {
		return runCoreDNS(args)
	},
	"provisioner": func(args []string) int {
		return runProvisioner(args)
	},
}

// corednsFlags are the flags CoreDNS registers on the standard flag set
// when its packages load. The Kubernetes commands merge that set into their
// own, where `-p` would collide with kubectl's shorthands; they are
// dropped for every command but coredns.
var corednsFlags = []string{"conf", "plugins", "pidfile", "version", "quiet", "dns.port", "p"}

func dropGoFlags(names []string) {
	drop := make(map[string]bool, len(names))
	for _, n := range names {
		drop[n] = true
	}
	kept := flag.NewFlagSet(flag.CommandLine.Name(), flag.ExitOnError)
	flag.CommandLine.VisitAll(func(f *flag.Flag) {
		if !drop[f.Name] {
			kept.Var(f.Value, f.Name, f.Usage)
		}
	})
	flag.CommandLine = kept
}

func main() {
	name := filepath.Base(os.Args[0])
	args := os.Args[1:]
	if _, ok := commands[name]; !ok && len(args) > 0 {
		name, args = args[0], args[1:]
	}
	run, ok := commands[name]
	if !ok {
		names := make([]string, 0, len(commands))
		for n := range commands {
			names = append(names, n)
		}
		sort.Strings(names)
		fmt.Fprintf(os.Stderr, "usage: ordinal-kube COMMAND [ARGS...]\ncommands: %v\n", names)
		os.Exit(2)
	}
	if name != "coredns" {
		dropGoFlags(corednsFlags)
	}
	// Commands that read os.Args themselves see their own name first.
	os.Args = append([]string{name}, args...)
	os.Exit(run(args))
}
