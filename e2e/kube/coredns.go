package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	// The plugins the cluster's Corefile uses, and no others: the stock
	// build's cloud DNS back ends would triple the compile.
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

// The order in which the plugins above run, as in CoreDNS's plugin.cfg.
var dnsDirectives = []string{
	"reload", "bind", "ready", "health", "errors", "log", "loadbalance", "cache", "kubernetes",
}

func runCoreDNS(_ []string) int {
	dnsserver.Directives = dnsDirectives
	coremain.Run() // reads os.Args itself
	return 0
}
