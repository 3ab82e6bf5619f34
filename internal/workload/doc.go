// Package workload owns the kinds of objects that hold a pod spec: one
// table of kind descriptors (kinds.go) says, per kind, its GVK, where its
// pod spec lives, whether its template may change, how its pods are found
// and whether the controller, the webhook or only `imagepin pin` handles
// it. The package lists workloads from the manager's cache, finds their
// pods and the workload a pod belongs to, and keeps the cache to what the
// controller reads, all from that table.
package workload
