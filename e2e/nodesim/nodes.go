package nodesim

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/util/retry"
)

// What the simulated nodes report about themselves.
const (
	// KubeletVersion is the kubelet version the nodes report.
	KubeletVersion = "v1.37.2-nodesim"
	// ContainerRuntimeVersion is the container runtime the nodes report,
	// and the scheme of the container IDs in pod statuses.
	ContainerRuntimeVersion = "nodesim://1"

	kubeletPort = 10250
	maxPods     = 110
	// heartbeatInterval is how often a node's condition heartbeats are
	// refreshed when nothing else changes.
	heartbeatInterval = 20 * time.Second
)

func nodeLabels(name string) map[string]string {
	return map[string]string{
		corev1.LabelHostname:   name,
		corev1.LabelOSStable:   "linux",
		corev1.LabelArchStable: "amd64",
	}
}

func (n *simNode) podCIDR() string { return fmt.Sprintf("10.244.%d.0/24", n.index) }

// registerNodes creates the nodes, or takes over existing ones of the same
// names, and writes their status.
func (s *Simulator) registerNodes(ctx context.Context) error {
	for _, name := range s.opts.Nodes {
		if err := s.registerNode(ctx, s.nodes[name]); err != nil {
			return fmt.Errorf("nodesim: register node %s: %w", name, err)
		}
	}
	return nil
}

func (s *Simulator) registerNode(ctx context.Context, n *simNode) error {
	nodes := s.client.CoreV1().Nodes()
	return retry.RetryOnConflict(retry.DefaultBackoff, func() error {
		node, err := nodes.Get(ctx, n.name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			node, err = nodes.Create(ctx, &corev1.Node{
				ObjectMeta: metav1.ObjectMeta{Name: n.name, Labels: nodeLabels(n.name)},
				Spec:       corev1.NodeSpec{PodCIDR: n.podCIDR(), PodCIDRs: []string{n.podCIDR()}},
			}, metav1.CreateOptions{})
			if err != nil {
				return err
			}
		case err != nil:
			return err
		}
		node = node.DeepCopy()
		now := metav1.Now().Rfc3339Copy()
		s.setNodeStatus(&node.Status, n, now, now)
		if node, err = nodes.UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
			return err
		}
		// The labels, and no condition taints now that it is Ready.
		node = node.DeepCopy()
		changed := false
		if node.Labels == nil {
			node.Labels = map[string]string{}
		}
		for k, v := range nodeLabels(n.name) {
			if node.Labels[k] != v {
				node.Labels[k], changed = v, true
			}
		}
		taints := node.Spec.Taints[:0]
		for _, t := range node.Spec.Taints {
			if conditionTaints[t.Key] {
				changed = true
				continue
			}
			taints = append(taints, t)
		}
		node.Spec.Taints = taints
		if changed {
			_, err = nodes.Update(ctx, node, metav1.UpdateOptions{})
		}
		return err
	})
}

// conditionTaints are the taints the TaintNodesByCondition admission plugin
// puts on a new node until the node lifecycle controller (which test
// clusters do not run) sees it Ready.
var conditionTaints = map[string]bool{
	corev1.TaintNodeNotReady:    true,
	corev1.TaintNodeUnreachable: true,
}

// syncNode writes a node's status when it differs from what the node should
// report (its image cache above all), and refreshes its heartbeats. A node
// deleted through the API is no longer run.
func (s *Simulator) syncNode(ctx context.Context, name string) (time.Duration, error) {
	n := s.node(name)
	if n == nil {
		return 0, nil
	}
	node, err := s.nodeLister.Get(name)
	if apierrors.IsNotFound(err) {
		s.nodeGone(name)
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	now := metav1.Now().Rfc3339Copy()
	var heartbeat metav1.Time
	for _, c := range node.Status.Conditions {
		if c.Type == corev1.NodeReady {
			heartbeat = c.LastHeartbeatTime
		}
	}
	desired := node.Status.DeepCopy()
	s.setNodeStatus(desired, n, heartbeat, now)
	age := now.Sub(heartbeat.Time)
	if age < heartbeatInterval && apiequality.Semantic.DeepEqual(desired, &node.Status) {
		return heartbeatInterval - age, nil
	}
	if age < heartbeatInterval && n.lastComputed != nil &&
		apiequality.Semantic.DeepEqual(desired, n.lastComputed) && apiequality.Semantic.DeepEqual(&node.Status, n.lastStored) {
		// The API server stored what was written differently; writing it
		// again would only loop.
		return heartbeatInterval - age, nil
	}
	s.setNodeStatus(desired, n, now, now)
	updated := node.DeepCopy()
	updated.Status = *desired
	stored, err := s.client.CoreV1().Nodes().UpdateStatus(ctx, updated, metav1.UpdateOptions{})
	if apierrors.IsNotFound(err) {
		s.nodeGone(name)
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	n.lastComputed, n.lastStored = desired, stored.Status.DeepCopy()
	return heartbeatInterval, nil
}

// nodeGone stops running a node whose Node object was deleted, and lets go
// of its pods.
func (s *Simulator) nodeGone(name string) {
	s.mu.Lock()
	already := s.gone[name]
	s.gone[name] = true
	s.mu.Unlock()
	if already {
		return
	}
	s.log.Info("node deleted: no longer running it or its pods", "node", name)
	pods, err := s.podLister.List(labels.Everything())
	if err != nil {
		return
	}
	for _, p := range pods {
		if p.Spec.NodeName == name {
			s.kubeletQ.Add(p.Namespace + "/" + p.Name)
		}
	}
	s.requeuePending()
}

// setNodeStatus sets what the simulator reports about node n in status,
// leaving what others wrote: its conditions (with heartbeat as their
// heartbeat time), capacity, addresses, node info and images.
func (s *Simulator) setNodeStatus(status *corev1.NodeStatus, n *simNode, heartbeat, now metav1.Time) {
	resources := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("8"),
		corev1.ResourceMemory: resource.MustParse("32Gi"),
		corev1.ResourcePods:   *resource.NewQuantity(maxPods, resource.DecimalSI),
	}
	status.Capacity = mergeResources(status.Capacity, resources)
	status.Allocatable = mergeResources(status.Allocatable, resources)

	for _, want := range []corev1.NodeCondition{
		{Type: corev1.NodeMemoryPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasSufficientMemory", Message: "kubelet has sufficient memory available"},
		{Type: corev1.NodeDiskPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasNoDiskPressure", Message: "kubelet has no disk pressure"},
		{Type: corev1.NodePIDPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasSufficientPID", Message: "kubelet has sufficient PID available"},
		{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady", Message: "kubelet is posting ready status"},
	} {
		want.LastHeartbeatTime = heartbeat
		want.LastTransitionTime = now
		found := false
		for i := range status.Conditions {
			c := &status.Conditions[i]
			if c.Type != want.Type {
				continue
			}
			if c.Status == want.Status {
				want.LastTransitionTime = c.LastTransitionTime
			}
			*c, found = want, true
		}
		if !found {
			status.Conditions = append(status.Conditions, want)
		}
	}

	status.Addresses = []corev1.NodeAddress{
		{Type: corev1.NodeInternalIP, Address: n.ip},
		{Type: corev1.NodeHostName, Address: n.name},
	}
	status.DaemonEndpoints.KubeletEndpoint.Port = kubeletPort
	id := sha256.Sum256([]byte("nodesim/" + n.name))
	hexID := hex.EncodeToString(id[:16])
	status.NodeInfo = corev1.NodeSystemInfo{
		MachineID:               hexID,
		SystemUUID:              fmt.Sprintf("%s-%s-%s-%s-%s", hexID[:8], hexID[8:12], hexID[12:16], hexID[16:20], hexID[20:]),
		BootID:                  hexID,
		KernelVersion:           "6.0.0-nodesim",
		OSImage:                 "nodesim",
		ContainerRuntimeVersion: ContainerRuntimeVersion,
		KubeletVersion:          KubeletVersion,
		OperatingSystem:         "linux",
		Architecture:            "amd64",
	}
	status.Images = nodeImages(n.cache.snapshot())
}

func mergeResources(have, set corev1.ResourceList) corev1.ResourceList {
	out := corev1.ResourceList{}
	for k, v := range have {
		out[k] = v
	}
	for k, v := range set {
		out[k] = v
	}
	return out
}
