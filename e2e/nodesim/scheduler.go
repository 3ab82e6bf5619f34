package nodesim

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"
)

// defaultScheduler is the scheduler name the simulator answers to.
const defaultScheduler = corev1.DefaultSchedulerName

// unschedulableRetry is how often a pod no node fits is tried again, on top
// of the tries node changes trigger.
const unschedulableRetry = 10 * time.Second

// assumed is a pod the scheduler bound that its cache may not show bound
// yet: it counts on its node all the same.
type assumed struct {
	node, key string
}

// schedule binds the pod key to the node with the fewest pods it fits on.
// It runs on one worker: pods are scheduled one at a time.
func (s *Simulator) schedule(ctx context.Context, key string) (time.Duration, error) {
	// Keys come from MetaNamespaceKeyFunc; a bad one finds no pod.
	ns, name, _ := cache.SplitMetaNamespaceKey(key)
	pod, err := s.podLister.Pods(ns).Get(name)
	if apierrors.IsNotFound(err) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	if !needsScheduling(pod) {
		return 0, nil
	}
	s.mu.Lock()
	_, bound := s.assumed[pod.UID]
	s.mu.Unlock()
	if bound {
		return 0, nil
	}
	node, why := s.pickNode(pod)
	if node == "" {
		return unschedulableRetry, s.markUnschedulable(ctx, pod, why)
	}
	err = s.client.CoreV1().Pods(ns).Bind(ctx, &corev1.Binding{
		ObjectMeta: metav1.ObjectMeta{Name: pod.Name, Namespace: pod.Namespace, UID: pod.UID},
		Target:     corev1.ObjectReference{Kind: "Node", APIVersion: "v1", Name: node},
	}, metav1.CreateOptions{})
	switch {
	case err == nil:
		s.mu.Lock()
		s.assumed[pod.UID] = assumed{node: node, key: key}
		s.mu.Unlock()
		s.log.V(1).Info("bound pod", "pod", key, "node", node)
	case apierrors.IsNotFound(err), apierrors.IsConflict(err):
		// Gone, or bound by someone else: the next event tells.
		s.log.V(1).Info("pod not bound", "pod", key, "node", node, "reason", err.Error())
	default:
		return 0, err
	}
	return 0, nil
}

// needsScheduling says whether pod waits for this scheduler.
func needsScheduling(pod *corev1.Pod) bool {
	return pod.Spec.NodeName == "" &&
		pod.DeletionTimestamp == nil &&
		(pod.Spec.SchedulerName == "" || pod.Spec.SchedulerName == defaultScheduler) &&
		len(pod.Spec.SchedulingGates) == 0 &&
		!terminal(pod)
}

func terminal(pod *corev1.Pod) bool {
	return pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed
}

// pickNode returns the node with the fewest pods that pod fits on, ties
// broken by name; or "" and why none fits.
func (s *Simulator) pickNode(pod *corev1.Pod) (string, string) {
	counts := s.podCounts()
	names := s.Nodes()
	sort.Strings(names)
	best, bestCount := "", 0
	why := map[string]int{}
	for _, name := range names {
		node, err := s.nodeLister.Get(name)
		if err != nil {
			why["node(s) not registered"]++
			continue
		}
		if reason := s.fits(pod, node, counts[name]); reason != "" {
			why[reason]++
			continue
		}
		if best == "" || counts[name] < bestCount {
			best, bestCount = name, counts[name]
		}
	}
	if best != "" {
		return best, ""
	}
	reasons := make([]string, 0, len(why))
	for r, n := range why {
		reasons = append(reasons, strconv.Itoa(n)+" "+r)
	}
	sort.Strings(reasons)
	return "", fmt.Sprintf("0/%d nodes are available: %s.", len(names), strings.Join(reasons, ", "))
}

// podCounts counts the pods on each node: bound pods that have not
// finished, terminating ones included, and pods bound but not yet seen so.
func (s *Simulator) podCounts() map[string]int {
	counts := map[string]int{}
	pods, err := s.podLister.List(labels.Everything())
	if err != nil {
		return counts
	}
	for _, p := range pods {
		if p.Spec.NodeName != "" && !terminal(p) {
			counts[p.Spec.NodeName]++
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for uid, a := range s.assumed {
		if s.stillAssumed(uid, a) {
			counts[a.node]++
		} else {
			// Seen bound (and counted above), or gone.
			delete(s.assumed, uid)
		}
	}
	return counts
}

func (s *Simulator) stillAssumed(uid types.UID, a assumed) bool {
	ns, name, err := cache.SplitMetaNamespaceKey(a.key)
	if err != nil {
		return false
	}
	p, err := s.podLister.Pods(ns).Get(name)
	return err == nil && p.UID == uid && p.Spec.NodeName == ""
}

// fits returns why pod cannot go to node, "" if it can.
func (s *Simulator) fits(pod *corev1.Pod, node *corev1.Node, pods int) string {
	if node.DeletionTimestamp != nil {
		return "node(s) being deleted"
	}
	if node.Spec.Unschedulable && !s.tolerates(pod, &corev1.Taint{Key: corev1.TaintNodeUnschedulable, Effect: corev1.TaintEffectNoSchedule}) {
		return "node(s) were unschedulable"
	}
	for i := range node.Spec.Taints {
		t := &node.Spec.Taints[i]
		if t.Effect != corev1.TaintEffectPreferNoSchedule && !s.tolerates(pod, t) {
			return "node(s) had untolerated taint(s)"
		}
	}
	for k, v := range pod.Spec.NodeSelector {
		if have, ok := node.Labels[k]; !ok || have != v {
			return "node(s) didn't match Pod's node affinity/selector"
		}
	}
	if a := pod.Spec.Affinity; a != nil && a.NodeAffinity != nil && a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution != nil {
		if !matchesNodeSelector(a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms, node) {
			return "node(s) didn't match Pod's node affinity/selector"
		}
	}
	if pods >= maxPods {
		return "Too many pods"
	}
	return ""
}

func (s *Simulator) tolerates(pod *corev1.Pod, taint *corev1.Taint) bool {
	for i := range pod.Spec.Tolerations {
		if pod.Spec.Tolerations[i].ToleratesTaint(s.log, taint, false) {
			return true
		}
	}
	return false
}

// matchesNodeSelector says whether node matches any of the terms; a term
// matches when all its expressions do, and an empty term matches nothing.
func matchesNodeSelector(terms []corev1.NodeSelectorTerm, node *corev1.Node) bool {
	for _, t := range terms {
		if len(t.MatchExpressions) == 0 && len(t.MatchFields) == 0 {
			continue
		}
		ok := true
		for _, e := range t.MatchExpressions {
			v, has := node.Labels[e.Key]
			ok = ok && requirementMatches(e, v, has)
		}
		for _, e := range t.MatchFields {
			// metadata.name is the one field node selectors support.
			ok = ok && e.Key == "metadata.name" && (e.Operator == corev1.NodeSelectorOpIn || e.Operator == corev1.NodeSelectorOpNotIn) &&
				requirementMatches(e, node.Name, true)
		}
		if ok {
			return true
		}
	}
	return false
}

func requirementMatches(e corev1.NodeSelectorRequirement, v string, has bool) bool {
	switch e.Operator {
	case corev1.NodeSelectorOpIn:
		return has && slices.Contains(e.Values, v)
	case corev1.NodeSelectorOpNotIn:
		return !has || !slices.Contains(e.Values, v)
	case corev1.NodeSelectorOpExists:
		return has
	case corev1.NodeSelectorOpDoesNotExist:
		return !has
	case corev1.NodeSelectorOpGt, corev1.NodeSelectorOpLt:
		if !has || len(e.Values) != 1 {
			return false
		}
		have, err1 := strconv.ParseInt(v, 10, 64)
		want, err2 := strconv.ParseInt(e.Values[0], 10, 64)
		if err1 != nil || err2 != nil {
			return false
		}
		if e.Operator == corev1.NodeSelectorOpGt {
			return have > want
		}
		return have < want
	}
	return false
}

// markUnschedulable records on the pod why no node fits it, as the
// scheduler does, unless that is what it says already.
func (s *Simulator) markUnschedulable(ctx context.Context, pod *corev1.Pod, why string) error {
	cond := corev1.PodCondition{
		Type: corev1.PodScheduled, Status: corev1.ConditionFalse,
		Reason: corev1.PodReasonUnschedulable, Message: why,
		ObservedGeneration: pod.Generation,
		LastTransitionTime: metav1.Now().Rfc3339Copy(),
	}
	p := pod.DeepCopy()
	found := false
	for i := range p.Status.Conditions {
		c := &p.Status.Conditions[i]
		if c.Type != corev1.PodScheduled {
			continue
		}
		if c.Status == cond.Status && c.Reason == cond.Reason && c.Message == cond.Message && c.ObservedGeneration == cond.ObservedGeneration {
			return nil
		}
		if c.Status == cond.Status {
			cond.LastTransitionTime = c.LastTransitionTime
		}
		*c, found = cond, true
	}
	if !found {
		p.Status.Conditions = append(p.Status.Conditions, cond)
	}
	p.Status.Phase = corev1.PodPending
	s.log.V(1).Info("pod unschedulable", "pod", pod.Namespace+"/"+pod.Name, "why", why)
	_, err := s.client.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, p, metav1.UpdateOptions{})
	if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		return nil
	}
	return err
}
