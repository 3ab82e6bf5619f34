// Package workload owns the five workload kinds imagepin selects: it lists
// them from the manager's cache and presents each as a Workload with the pod
// template imagepin reads images from, whatever its kind.
package workload
