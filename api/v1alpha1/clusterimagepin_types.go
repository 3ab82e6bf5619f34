package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ClusterImagePinSpec is an ImagePin's spec for many namespaces: the
// namespaces it selects, then what an ImagePin says for each of them (the
// ImagePinSpec's own validation rules come with it).
// +kubebuilder:validation:XValidation:rule="!has(self.retention) || ((!has(self.retention.protect) || !self.retention.protect) && !has(self.retention.pushSecretRef))",message="retention.protect and retention.pushSecretRef are set on an ImagePin: keep tags are pushed with one namespace's credentials"
type ClusterImagePinSpec struct {
	// namespaceSelector selects namespaces by their labels; empty selects
	// every namespace but those in excludeNamespaces. Namespaces created or
	// relabelled later are picked up.
	// +optional
	// +kubebuilder:validation:XValidation:rule="!has(self.matchExpressions) || self.matchExpressions.all(e, e.operator in ['In', 'NotIn', 'Exists', 'DoesNotExist'])",message="matchExpressions[].operator must be In, NotIn, Exists or DoesNotExist"
	NamespaceSelector *metav1.LabelSelector `json:"namespaceSelector,omitempty"`

	// excludeNamespaces are never selected, whatever their labels. The
	// default leaves out kube-system and imagepin's own namespace; set it
	// (to [] for none) to change that.
	// +optional
	// +kubebuilder:default={"kube-system","imagepin-system"}
	// +listType=set
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=63
	ExcludeNamespaces []string `json:"excludeNamespaces,omitempty"`

	// The same fields as an ImagePin's spec, for each selected namespace.
	ImagePinSpec `json:",inline"`
}

// NamespaceSummary is what a ClusterImagePin selects in one namespace.
type NamespaceSummary struct {
	// name of the namespace.
	// +required
	// +kubebuilder:validation:MaxLength=63
	Name string `json:"name"`
	// Summary counts its workloads, images, pinned and drifted containers.
	Summary `json:",inline"`
	// yieldedTo names the ImagePins of the namespace that select some of
	// these workloads: they write those containers, not this
	// ClusterImagePin (the namespaced one wins).
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:items:MaxLength=253
	YieldedTo []string `json:"yieldedTo,omitempty"`
}

// ClusterSummary counts what a ClusterImagePin selects in every namespace.
type ClusterSummary struct {
	// namespaces is the number of selected namespaces.
	// +optional
	Namespaces int32 `json:"namespaces"`
	// Summary counts workloads, images, pinned and drifted containers
	// across them.
	Summary `json:",inline"`
}

// ClusterImagePinStatus is what imagepin last saw in every selected
// namespace. It is bounded like an ImagePin's: entries past the limits are
// left out, drifted ones last, and the counts stay complete.
type ClusterImagePinStatus struct {
	// observedGeneration is the spec generation this status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// lastCheckTime is when the workloads were last listed and their images
	// last resolved.
	// +optional
	LastCheckTime *metav1.Time `json:"lastCheckTime,omitempty"`

	// summary counts what this ClusterImagePin selects, across namespaces.
	// +optional
	Summary ClusterSummary `json:"summary,omitzero"`

	// conditions: Ready, Drifted and Conflict.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=8
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// namespaces breaks the summary down by namespace, the drifted ones
	// first.
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=256
	Namespaces []NamespaceSummary `json:"namespaces,omitempty"`

	// images lists every selected image reference with what it resolves to
	// and which workload containers use it (each naming its namespace),
	// the drifted ones first.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=256
	Images []ImageStatus `json:"images,omitempty"`
}

// ClusterImagePin pins the images of the workloads it selects in many
// namespaces, as an ImagePin in each of them would; an ImagePin of a
// namespace that selects a workload takes precedence over it.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=cipin,categories=imagepin
// +kubebuilder:printcolumn:name="Mode",type=string,JSONPath=`.spec.mode`
// +kubebuilder:printcolumn:name="Namespaces",type=integer,JSONPath=`.status.summary.namespaces`
// +kubebuilder:printcolumn:name="Workloads",type=integer,JSONPath=`.status.summary.workloads`
// +kubebuilder:printcolumn:name="Images",type=integer,JSONPath=`.status.summary.images`
// +kubebuilder:printcolumn:name="Pinned",type=integer,JSONPath=`.status.summary.pinned`
// +kubebuilder:printcolumn:name="Drifted",type=integer,JSONPath=`.status.summary.drifted`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:printcolumn:name="Last Check",type=date,JSONPath=`.status.lastCheckTime`,priority=1
type ClusterImagePin struct {
	metav1.TypeMeta `json:",inline"`

	// metadata is the object's metadata.
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec says which namespaces and workloads to watch and what to do
	// with them.
	// +required
	Spec ClusterImagePinSpec `json:"spec"`

	// status is what imagepin last saw.
	// +optional
	Status ClusterImagePinStatus `json:"status,omitzero"`
}

// ClusterImagePinList is a list of ClusterImagePins.
// +kubebuilder:object:root=true
type ClusterImagePinList struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the list's metadata.
	// +optional
	metav1.ListMeta `json:"metadata,omitempty"`
	// items are the ClusterImagePins.
	Items []ClusterImagePin `json:"items"`
}
