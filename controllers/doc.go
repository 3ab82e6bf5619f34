// Package controllers holds imagepin's reconcilers. The ImagePin reconciler
// reads an ImagePin, selects the workloads it names and writes what it found
// to the ImagePin's status, once per reconcile and only when it changed.
package controllers
