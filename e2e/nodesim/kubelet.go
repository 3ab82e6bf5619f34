package nodesim

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"
)

// Pull retries back off exponentially from pullBackoffBase to pullBackoffMax.
const (
	pullBackoffBase = time.Second
	pullBackoffMax  = 10 * time.Second
)

// podState is what a simulated kubelet remembers about a pod on its node.
// Only the worker syncing the pod touches it.
type podState struct {
	uid        types.UID
	node       *simNode
	ipOctet    int
	startTime  metav1.Time
	containers map[string]*containerState // init and regular, by name
	// terminatingSince is when the kubelet first saw the pod deleted, and
	// finished whether it has removed it since.
	terminatingSince time.Time
	finished         bool
	// The status last written and what the API server stored of it.
	lastComputed, lastStored *corev1.PodStatus
}

// containerState is one container of a pod: the image it is for, and
// whether that image is present (the container then runs) or why not.
type containerState struct {
	image       string // the spec's image this state is for
	imageID     string // "repo@sha256:…" once the image is present
	containerID string // set once the container started
	startedAt   metav1.Time
	finishedAt  metav1.Time // when an init container completed
	restarts    int32
	last        corev1.ContainerState
	// Image pull failures in a row, when to try again, and the last one.
	failures int
	retryAt  time.Time
	err      *pullError
}

func (c *containerState) running() bool { return c.containerID != "" }

func (c *containerState) completed() bool { return c.running() && !c.finishedAt.IsZero() }

func (st *podState) container(name string) *containerState {
	c, ok := st.containers[name]
	if !ok {
		c = &containerState{}
		st.containers[name] = c
	}
	return c
}

// podStateFor returns the state of pod, new if the pod is new to node n.
func (s *Simulator) podStateFor(key string, pod *corev1.Pod, n *simNode) *podState {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.pods[key]
	if st != nil && (st.uid != pod.UID || st.node != n) {
		st.node.releaseIP(st.ipOctet)
		st = nil
	}
	if st == nil {
		st = &podState{uid: pod.UID, node: n, ipOctet: n.allocateIP(), containers: map[string]*containerState{}}
		s.pods[key] = st
	}
	return st
}

// forgetPod drops what the kubelet knew of a pod that left its nodes.
func (s *Simulator) forgetPod(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st := s.pods[key]; st != nil {
		st.node.releaseIP(st.ipOctet)
		delete(s.pods, key)
	}
}

// allocateIP returns the lowest free x of 10.244.<index>.x in 2..254, or
// one in use if none is free.
func (n *simNode) allocateIP() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	for x := 2; x <= 254; x++ {
		if !n.podIPs[x] {
			n.podIPs[x] = true
			return x
		}
	}
	return 2 + len(n.podIPs)%253
}

func (n *simNode) releaseIP(x int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.podIPs, x)
}

// syncPod does what the kubelet of the pod's node does: make its images
// available, report its containers running, and finish it once deleted.
func (s *Simulator) syncPod(ctx context.Context, key string) (time.Duration, error) {
	// Keys come from MetaNamespaceKeyFunc; a bad one finds no pod.
	ns, name, _ := cache.SplitMetaNamespaceKey(key)
	pod, err := s.podLister.Pods(ns).Get(name)
	if apierrors.IsNotFound(err) {
		s.forgetPod(key)
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	n := s.node(pod.Spec.NodeName)
	if n == nil {
		s.forgetPod(key)
		return 0, nil
	}
	st := s.podStateFor(key, pod, n)
	if pod.DeletionTimestamp != nil {
		return s.terminate(ctx, pod, st)
	}
	if terminal(pod) {
		return 0, nil
	}
	status, after := s.runPod(ctx, pod, st)
	if apiequality.Semantic.DeepEqual(status, &pod.Status) {
		return after, nil
	}
	if st.lastComputed != nil && apiequality.Semantic.DeepEqual(status, st.lastComputed) && apiequality.Semantic.DeepEqual(&pod.Status, st.lastStored) {
		// The API server stored what was written differently; writing it
		// again would only loop.
		return after, nil
	}
	updated := pod.DeepCopy()
	updated.Status = *status
	stored, err := s.client.CoreV1().Pods(ns).UpdateStatus(ctx, updated, metav1.UpdateOptions{})
	if apierrors.IsNotFound(err) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	st.lastComputed, st.lastStored = status, stored.Status.DeepCopy()
	return after, nil
}

// terminate deletes a deleted pod for good, with grace period zero and its
// UID as precondition as the kubelet does, once it has been terminating for
// the termination delay or its grace period if that is shorter.
func (s *Simulator) terminate(ctx context.Context, pod *corev1.Pod, st *podState) (time.Duration, error) {
	if st.finished {
		return 0, nil
	}
	if st.terminatingSince.IsZero() {
		st.terminatingSince = time.Now()
	}
	grace := 30 * time.Second
	switch {
	case pod.DeletionGracePeriodSeconds != nil:
		grace = time.Duration(*pod.DeletionGracePeriodSeconds) * time.Second
	case pod.Spec.TerminationGracePeriodSeconds != nil:
		grace = time.Duration(*pod.Spec.TerminationGracePeriodSeconds) * time.Second
	}
	if wait := min(s.opts.TerminationDelay, grace) - time.Since(st.terminatingSince); wait > 0 {
		return wait, nil
	}
	err := s.client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
		GracePeriodSeconds: ptr.To[int64](0),
		Preconditions:      metav1.NewUIDPreconditions(string(pod.UID)),
	})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		return 0, err
	}
	st.finished = true
	s.log.V(1).Info("pod terminated", "pod", pod.Namespace+"/"+pod.Name, "node", pod.Spec.NodeName)
	return 0, nil
}

// runPod starts what it can of pod (init containers in order, then the
// containers) and returns the status the pod should have, and when to try
// again for images that failed to pull (0: no need).
func (s *Simulator) runPod(ctx context.Context, pod *corev1.Pod, st *podState) (*corev1.PodStatus, time.Duration) {
	n := st.node
	now := metav1.Now().Rfc3339Copy()
	if st.startTime.IsZero() {
		st.startTime = now
	}
	status := pod.Status.DeepCopy()
	status.ObservedGeneration = pod.Generation
	status.HostIP, status.HostIPs = n.ip, []corev1.HostIP{{IP: n.ip}}
	podIP := fmt.Sprintf("10.244.%d.%d", n.index, st.ipOctet)
	if pod.Spec.HostNetwork {
		podIP = n.ip
	}
	status.PodIP, status.PodIPs = podIP, []corev1.PodIP{{IP: podIP}}
	if status.StartTime == nil {
		status.StartTime = ptr.To(st.startTime)
	}

	var after time.Duration
	sooner := func(d time.Duration) {
		if d > 0 && (after == 0 || d < after) {
			after = d
		}
	}
	initialized := true
	var notInitialized, notReady []string
	status.InitContainerStatuses = make([]corev1.ContainerStatus, 0, len(pod.Spec.InitContainers))
	for i := range pod.Spec.InitContainers {
		c := &pod.Spec.InitContainers[i]
		cs := st.container(c.Name)
		sidecar := c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways
		switch {
		case !initialized:
			status.InitContainerStatuses = append(status.InitContainerStatuses, waitingStatus(c, cs, "PodInitializing", ""))
			notInitialized = append(notInitialized, c.Name)
			continue
		case !sidecar && cs.completed():
			// Completed init containers do not run again, whatever their
			// image becomes.
			status.InitContainerStatuses = append(status.InitContainerStatuses, completedStatus(c, cs))
			continue
		}
		sooner(s.startContainer(ctx, pod, c, cs, now))
		switch {
		case !cs.running():
			status.InitContainerStatuses = append(status.InitContainerStatuses, notRunningStatus(c, cs))
			notInitialized = append(notInitialized, c.Name)
			initialized = false
		case sidecar:
			status.InitContainerStatuses = append(status.InitContainerStatuses, runningStatus(c, cs))
		default:
			cs.finishedAt = now
			status.InitContainerStatuses = append(status.InitContainerStatuses, completedStatus(c, cs))
		}
	}

	pending := !initialized
	status.ContainerStatuses = make([]corev1.ContainerStatus, 0, len(pod.Spec.Containers))
	for i := range pod.Spec.Containers {
		c := &pod.Spec.Containers[i]
		cs := st.container(c.Name)
		if !initialized {
			status.ContainerStatuses = append(status.ContainerStatuses, waitingStatus(c, cs, "PodInitializing", ""))
			notReady = append(notReady, c.Name)
			continue
		}
		sooner(s.startContainer(ctx, pod, c, cs, now))
		if cs.running() {
			status.ContainerStatuses = append(status.ContainerStatuses, runningStatus(c, cs))
			continue
		}
		status.ContainerStatuses = append(status.ContainerStatuses, notRunningStatus(c, cs))
		notReady = append(notReady, c.Name)
		if cs.last.Terminated == nil {
			// Never started: the pod is still pending. A container
			// restarting for a new image leaves the pod running.
			pending = true
		}
	}
	status.Phase = corev1.PodRunning
	if pending {
		status.Phase = corev1.PodPending
	}
	status.Conditions = podConditions(pod, notInitialized, notReady, now)
	return status, after
}

// startContainer starts container c if its image is available per its pull
// policy, pulling it if need be, and returns when to try again if it is not.
// A running container whose spec image changed is restarted with the new
// image, as the kubelet does.
func (s *Simulator) startContainer(ctx context.Context, pod *corev1.Pod, c *corev1.Container, cs *containerState, now metav1.Time) time.Duration {
	if cs.image != c.Image {
		if cs.running() {
			cs.last = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
				ExitCode: 0, Reason: "Completed", StartedAt: cs.startedAt, FinishedAt: now, ContainerID: cs.containerID,
			}}
			cs.restarts++
		}
		*cs = containerState{image: c.Image, restarts: cs.restarts, last: cs.last}
	}
	if cs.running() || (cs.err != nil && cs.err.final) {
		return 0
	}
	if wait := time.Until(cs.retryAt); wait > 0 {
		return wait
	}
	n := s.node(pod.Spec.NodeName)
	if n == nil {
		cs.err = &pullError{reason: "ContainerCreating", message: "node is gone"}
		return 0
	}
	id, perr := s.ensureImage(ctx, n, pod, c)
	if perr == nil {
		sum := sha256.Sum256(fmt.Appendf(nil, "%s/%s/%d", pod.UID, c.Name, cs.restarts))
		cs.imageID = id
		cs.containerID = "nodesim://" + hex.EncodeToString(sum[:])
		cs.startedAt = now
		cs.failures, cs.retryAt, cs.err = 0, time.Time{}, nil
		s.log.V(1).Info("container started", "pod", pod.Namespace+"/"+pod.Name, "container", c.Name, "imageID", id, "node", n.name)
		return 0
	}
	cs.failures++
	if perr.reason == reasonErrImagePull && cs.failures > 1 {
		perr = &pullError{
			reason:  reasonImagePullBackOff,
			message: fmt.Sprintf("Back-off pulling image %q: %s: %s", c.Image, reasonErrImagePull, perr.message),
		}
	}
	cs.err = perr
	s.log.V(1).Info("image not available", "pod", pod.Namespace+"/"+pod.Name, "container", c.Name, "reason", perr.reason, "message", perr.message)
	if perr.final {
		return 0
	}
	backoff := pullBackoffMax
	if cs.failures < 5 {
		backoff = min(pullBackoffBase<<(cs.failures-1), pullBackoffMax)
	}
	cs.retryAt = time.Now().Add(backoff)
	return backoff
}

func baseStatus(c *corev1.Container, cs *containerState) corev1.ContainerStatus {
	image := cs.image
	if image == "" {
		image = c.Image
	}
	return corev1.ContainerStatus{
		Name:                 c.Name,
		Image:                image,
		ImageID:              cs.imageID,
		ContainerID:          cs.containerID,
		RestartCount:         cs.restarts,
		LastTerminationState: cs.last,
		Started:              ptr.To(false),
	}
}

func runningStatus(c *corev1.Container, cs *containerState) corev1.ContainerStatus {
	out := baseStatus(c, cs)
	out.State = corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: cs.startedAt}}
	out.Ready, out.Started = true, ptr.To(true)
	return out
}

// completedStatus is an init container that ran to completion: ready and
// no longer started, as the kubelet reports it.
func completedStatus(c *corev1.Container, cs *containerState) corev1.ContainerStatus {
	out := baseStatus(c, cs)
	out.State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
		ExitCode: 0, Reason: "Completed", StartedAt: cs.startedAt, FinishedAt: cs.finishedAt, ContainerID: cs.containerID,
	}}
	out.Ready = true
	return out
}

// notRunningStatus is a container whose image is not available.
func notRunningStatus(c *corev1.Container, cs *containerState) corev1.ContainerStatus {
	if cs.err == nil {
		return waitingStatus(c, cs, "ContainerCreating", "")
	}
	return waitingStatus(c, cs, cs.err.reason, cs.err.message)
}

func waitingStatus(c *corev1.Container, cs *containerState, reason, message string) corev1.ContainerStatus {
	out := baseStatus(c, cs)
	out.State = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: message}}
	return out
}

// kubeletConditions are the pod conditions the kubelet owns.
var kubeletConditions = map[corev1.PodConditionType]bool{
	corev1.PodReadyToStartContainers: true,
	corev1.PodInitialized:            true,
	corev1.PodReady:                  true,
	corev1.ContainersReady:           true,
	corev1.PodScheduled:              true,
}

// podConditions returns the pod's conditions: the ones others own as they
// are, then the kubelet's, keeping their transition times while their
// status holds.
func podConditions(pod *corev1.Pod, notInitialized, notReady []string, now metav1.Time) []corev1.PodCondition {
	initialized := corev1.PodCondition{Type: corev1.PodInitialized, Status: corev1.ConditionTrue}
	if len(notInitialized) > 0 {
		initialized.Status, initialized.Reason = corev1.ConditionFalse, "ContainersNotInitialized"
		initialized.Message = fmt.Sprintf("containers with incomplete status: [%s]", strings.Join(notInitialized, " "))
	}
	containersReady := corev1.PodCondition{Type: corev1.ContainersReady, Status: corev1.ConditionTrue}
	if len(notReady) > 0 {
		containersReady.Status, containersReady.Reason = corev1.ConditionFalse, "ContainersNotReady"
		containersReady.Message = fmt.Sprintf("containers with unready status: [%s]", strings.Join(notReady, " "))
	}
	ready := containersReady
	ready.Type = corev1.PodReady
	if ready.Status == corev1.ConditionTrue {
		if msg := readinessGatesPending(pod); msg != "" {
			ready.Status, ready.Reason, ready.Message = corev1.ConditionFalse, "ReadinessGatesNotReady", msg
		}
	}
	ours := []corev1.PodCondition{
		{Type: corev1.PodReadyToStartContainers, Status: corev1.ConditionTrue},
		initialized,
		ready,
		containersReady,
		{Type: corev1.PodScheduled, Status: corev1.ConditionTrue},
	}

	out := make([]corev1.PodCondition, 0, len(pod.Status.Conditions)+len(ours))
	for _, c := range pod.Status.Conditions {
		if !kubeletConditions[c.Type] {
			out = append(out, c)
		}
	}
	for _, c := range ours {
		c.ObservedGeneration = pod.Generation
		c.LastTransitionTime = now
		for _, old := range pod.Status.Conditions {
			if old.Type == c.Type && old.Status == c.Status {
				c.LastTransitionTime, c.LastProbeTime = old.LastTransitionTime, old.LastProbeTime
			}
		}
		out = append(out, c)
	}
	return out
}

// readinessGatesPending says which of the pod's readiness gates is not
// True, "" if none.
func readinessGatesPending(pod *corev1.Pod) string {
	for _, g := range pod.Spec.ReadinessGates {
		found := false
		for _, c := range pod.Status.Conditions {
			if c.Type != g.ConditionType {
				continue
			}
			found = true
			if c.Status != corev1.ConditionTrue {
				return fmt.Sprintf("the status of pod readiness gate %q is not \"True\", but %s", g.ConditionType, c.Status)
			}
		}
		if !found {
			return fmt.Sprintf("corresponding condition of pod readiness gate %q does not exist.", g.ConditionType)
		}
	}
	return ""
}
