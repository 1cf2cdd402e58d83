//go:build tools

// Package e2e only pins the modules whose commands scripts/e2e builds; it has no code of its own.
package e2e

import (
	_ "go.etcd.io/etcd/server/v3/etcdmain"
	_ "k8s.io/kubernetes/cmd/kube-apiserver/app"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager/app"
)
