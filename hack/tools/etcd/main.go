// Command etcd is etcd's server, built from the module proxy at the version
// go.mod pins, for envtest and the local cluster.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
