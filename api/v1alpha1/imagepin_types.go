/*
Copyright 2026 The imagepin Authors.

Licensed under the Apache License, Version 2.0 (the "License");
you may not use this file except in compliance with the License.
You may obtain a copy of the License at

    http://www.apache.org/licenses/LICENSE-2.0

Unless required by applicable law or agreed to in writing, software
distributed under the License is distributed on an "AS IS" BASIS,
WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
See the License for the specific language governing permissions and
limitations under the License.
*/

package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Mode says what imagepin does with the workloads an ImagePin selects.
// +kubebuilder:validation:Enum=Observe;Pin;Follow
type Mode string

const (
	// ModeObserve reports drift and never writes a workload.
	ModeObserve Mode = "Observe"
	// ModePin rewrites tag-only images to repo:tag@digest once, and then
	// leaves them alone: a moved tag is reported, not rolled out.
	ModePin Mode = "Pin"
	// ModeFollow pins like ModePin and moves the pinned digest when the tag
	// moves, one rollout per real change.
	ModeFollow Mode = "Follow"
)

// WorkloadKind's enum is the workload kinds of internal/workload's table
// (TestTheAPIEnumIsTheTablesWorkloadKinds holds them equal).

// WorkloadKind is a kind of workload an ImagePin can select: a built-in one
// (Deployment, StatefulSet, DaemonSet, Job, CronJob, Rollout), or a kind
// the manager is configured with (--workload-kind). The manager refuses a
// kind it does not know with Ready=False, naming those it does.
// +kubebuilder:validation:Pattern=`^[A-Z][A-Za-z0-9]*$`
// +kubebuilder:validation:MaxLength=63
type WorkloadKind string

// The workload kinds imagepin understands.
const (
	KindDeployment  WorkloadKind = "Deployment"
	KindStatefulSet WorkloadKind = "StatefulSet"
	KindDaemonSet   WorkloadKind = "DaemonSet"
	KindJob         WorkloadKind = "Job"
	KindCronJob     WorkloadKind = "CronJob"
	// KindRollout is Argo Rollouts' Rollout (argoproj.io/v1alpha1).
	KindRollout WorkloadKind = "Rollout"
)

// FailurePolicy says what admission does with a workload whose tag cannot be
// resolved.
// +kubebuilder:validation:Enum=Ignore;Fail
type FailurePolicy string

const (
	// FailurePolicyIgnore admits the workload unpinned, with a warning.
	FailurePolicyIgnore FailurePolicy = "Ignore"
	// FailurePolicyFail refuses the workload, naming the image and the reason.
	FailurePolicyFail FailurePolicy = "Fail"
)

// Digest is an OCI content digest, sha256 only: "sha256:" and 64 lowercase
// hex characters.
// +kubebuilder:validation:Pattern=`^sha256:[a-f0-9]{64}$`
// +kubebuilder:validation:MaxLength=71
type Digest string

// ImagePinSpec says which workloads imagepin watches and what it does to them.
// +kubebuilder:validation:XValidation:rule="!has(self.overrides) || self.overrides.all(o, !has(self.images) || !has(self.images.exclude) || !self.images.exclude.exists(e, e == o.image))",message="an override names an image that spec.images.exclude excludes; remove one of them"
type ImagePinSpec struct {
	// selector picks workloads in the ImagePin's namespace by their labels.
	// Empty or absent selects every workload of the selected kinds.
	// +optional
	Selector *metav1.LabelSelector `json:"selector,omitempty"`

	// kinds are the workload kinds to select. Empty selects all:
	// Deployment, StatefulSet, DaemonSet, Job, CronJob, where Argo Rollouts
	// is installed Rollout, and the kinds the manager is configured with
	// (--workload-kind) that the cluster serves.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=32
	Kinds []WorkloadKind `json:"kinds,omitempty"`

	// images filters container images by reference, with shell globs.
	// +optional
	Images *ImageFilter `json:"images,omitempty"`

	// mode is what imagepin does: Observe reports drift only, Pin rewrites
	// tag-only images to repo:tag@digest, Follow also moves the digest when
	// the tag moves.
	// +optional
	// +kubebuilder:default=Observe
	Mode Mode `json:"mode,omitempty"`

	// interval is how often tags are resolved again, as a Go duration
	// ("90s", "5m", "1h"); at least 10s.
	// +optional
	// +kubebuilder:default="5m"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:XValidation:rule="!self.matches('^([0-9]+(\\\\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$') || duration(self) >= duration('10s')",message="interval must be at least 10s"
	Interval *metav1.Duration `json:"interval,omitempty"`

	// follow tunes mode Follow.
	// +optional
	Follow *FollowSpec `json:"follow,omitempty"`

	// overrides pin single images to a chosen digest in modes Pin and Follow,
	// whatever the tag points to: a hold, or a rollback to a digest found in
	// status.images[].history.
	// +optional
	// +listType=map
	// +listMapKey=image
	// +kubebuilder:validation:MaxItems=64
	Overrides []ImageOverride `json:"overrides,omitempty"`

	// failurePolicy is what admission does with a workload whose tag cannot
	// be resolved: Ignore admits it unpinned with a warning, Fail refuses it.
	// +optional
	// +kubebuilder:default=Ignore
	FailurePolicy FailurePolicy `json:"failurePolicy,omitempty"`

	// suspend stops all registry traffic and all writes for this ImagePin;
	// status keeps what was last seen.
	// +optional
	Suspend bool `json:"suspend,omitempty"`

	// verify, when set, makes Pin and Follow write only digests whose
	// signatures verify, and the admission webhook pin only those: a
	// digest that does not verify is reported (drift Unverified) and not
	// rolled out, and admission refuses it or admits the workload
	// unpinned with a warning, per failurePolicy. Observe reports
	// verification without acting.
	// +optional
	Verify *VerifySpec `json:"verify,omitempty"`

	// retention says how imagepin watches that the digests a rollback
	// needs are still in the registry.
	// +optional
	Retention *RetentionSpec `json:"retention,omitempty"`
}

// RetentionSpec says how the digests a backout needs are kept in sight:
// every digest running, pinned, overridden or in status.images[].history
// is checked with a HEAD by digest, which the registry answers 404 once
// its garbage collection has deleted the image.
type RetentionSpec struct {
	// checkInterval is how often a digest found present is checked again,
	// as a Go duration; at least 1m, at most 48h. Content under a digest never changes,
	// so this can be slow: each distinct digest costs one HEAD per
	// interval. A digest found gone, or never checked, is checked with
	// the ImagePin's next check.
	// +optional
	// +kubebuilder:default="6h"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:XValidation:rule="!self.matches('^([0-9]+(\\\\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$') || (duration(self) >= duration('1m') && duration(self) <= duration('48h'))",message="retention.checkInterval must be between 1m and 48h"
	CheckInterval *metav1.Duration `json:"checkInterval,omitempty"`

	// protect keeps the digests a backout needs in the registry: every
	// digest the selected containers run or pin, and the newest keepLast
	// digests of each image's history, gets a tag of its own,
	// "imagepin-keep-" and the digest's first 12 hex digits, pushed
	// through the registry API, so that garbage collection of untagged
	// manifests spares it. A tag no longer needed is deleted, and only a
	// tag imagepin created (status.keepTags) is ever deleted. Off by
	// default: without it, imagepin pushes nothing.
	// +optional
	Protect bool `json:"protect,omitempty"`

	// keepLast is how many of each image's newest history digests
	// protect keeps, the one the tag names now included.
	// +optional
	// +kubebuilder:default=3
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=10
	KeepLast *int32 `json:"keepLast,omitempty"`

	// pushSecretRef names a Secret of type kubernetes.io/dockerconfigjson
	// in the ImagePin's namespace whose credentials push and delete the
	// keep tags. Without it, the workload's pull secrets (its own and its
	// service account's) are used, which a registry may refuse to push
	// with: the Retained condition then says so.
	// +optional
	// +kubebuilder:validation:XValidation:rule="has(self.name) && self.name != ''",message="pushSecretRef.name must name a Secret"
	PushSecretRef *corev1.LocalObjectReference `json:"pushSecretRef,omitempty"`
}

// KeepTagPrefix begins every tag spec.retention.protect pushes. Exclude
// it from a registry's own retention rules (ECR lifecycle policies, Harbor
// tag retention) so that the tags keep what they are there to keep.
const KeepTagPrefix = "imagepin-keep-"

// KeepTag is a tag imagepin pushed to keep a digest in the registry.
type KeepTag struct {
	// image is the repository, as the workloads name it (tag removed).
	// +required
	// +kubebuilder:validation:MaxLength=512
	Image string `json:"image"`
	// tag is the tag pushed: KeepTagPrefix and the digest's first 12 hex
	// digits.
	// +required
	// +kubebuilder:validation:MaxLength=128
	Tag string `json:"tag"`
	// digest is what tag points at.
	// +required
	Digest Digest `json:"digest"`
	// createdAt is when this ImagePin first relied on it.
	// +required
	CreatedAt metav1.Time `json:"createdAt"`
	// pushed is true when this ImagePin pushed the tag, false when it
	// found it in place (another ImagePin's). Only a tag it pushed is
	// deleted, once it is not needed and no other ImagePin relies on it.
	// +optional
	Pushed bool `json:"pushed,omitempty"`
	// released is true when this ImagePin no longer needs the tag, and
	// keeps the record only to delete the tag it pushed once no other
	// ImagePin needs it.
	// +optional
	Released bool `json:"released,omitempty"`
}

// ImageFilter selects container images by reference. A reference is matched
// as the workload names it, digest removed, against globs: "*" matches any
// run of characters, "/" included, "?" one character, "[a-z]" a class.
type ImageFilter struct {
	// include lists globs an image must match to be selected. Empty
	// includes every image.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=512
	Include []string `json:"include,omitempty"`

	// exclude lists globs that drop an image even if include selects it.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=512
	Exclude []string `json:"exclude,omitempty"`
}

// FollowSpec tunes mode Follow.
type FollowSpec struct {
	// minAge is how long a new digest must have been seen on the tag before
	// it is rolled out, as a Go duration; 0s rolls out at once. A tag that
	// flips back and forth inside minAge rolls nothing out.
	// +optional
	// +kubebuilder:default="0s"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	// +kubebuilder:validation:MaxLength=32
	MinAge *metav1.Duration `json:"minAge,omitempty"`
}

// ImageOverride pins one image to one digest.
// +kubebuilder:validation:XValidation:rule="has(self.digest)",messageExpression="'override for ' + self.image + ' needs a digest (sha256:...) to pin it to'"
type ImageOverride struct {
	// image is the reference as workloads name it, without a digest, for
	// example registry.example.com/team/app:v1.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=512
	// +kubebuilder:validation:XValidation:rule="!self.contains('@')",message="image names the image as workloads do, without a digest; put the digest in digest"
	Image string `json:"image"`

	// digest is the digest to run instead of whatever the tag points to.
	// +optional
	Digest Digest `json:"digest,omitempty"`
}

// DriftReason names one way a workload container differs from what its tag
// means.
// +kubebuilder:validation:Enum=Unpinned;TagMoved;MixedReplicas;RolloutPending;Unresolvable;Unverified;DigestGone
type DriftReason string

// Drift reasons, per workload container. docs/reference.md explains each.
const (
	// DriftUnpinned: the spec names a tag without a digest.
	DriftUnpinned DriftReason = "Unpinned"
	// DriftTagMoved: the tag resolves to a digest other than the pinned one
	// (or, when unpinned, other than the one the pods run).
	DriftTagMoved DriftReason = "TagMoved"
	// DriftMixedReplicas: the workload's pods run more than one digest.
	DriftMixedReplicas DriftReason = "MixedReplicas"
	// DriftRolloutPending: pods run a digest other than the pinned one.
	DriftRolloutPending DriftReason = "RolloutPending"
	// DriftUnresolvable: the registry could not resolve the tag.
	DriftUnresolvable DriftReason = "Unresolvable"
	// DriftUnverified: spec.verify is set, and the digest the tag resolves
	// to, or the one the spec pins, does not verify; it is not rolled out.
	DriftUnverified DriftReason = "Unverified"
	// DriftDigestGone: the registry no longer has the digest the spec pins,
	// or one the pods run: they run on, but a new pod (a scale-up, a node
	// drain, a restart elsewhere) will fail to pull it.
	DriftDigestGone DriftReason = "DigestGone"
)

// ShardLabel on an ImagePin or a ClusterImagePin names the shard that
// reconciles it: the manager started with --shard=<value>. One without the
// label is reconciled by the manager started without --shard. Every
// manager's webhook pins for every ImagePin, whatever its shard.
const ShardLabel = "images.imagepin.dev/shard"

// Condition types an ImagePin reports.
const (
	// ConditionReady is True when the spec is valid and every selected image
	// resolved on the last check.
	ConditionReady = "Ready"
	// ConditionDrifted is True when any selected container has drifted.
	ConditionDrifted = "Drifted"
	// ConditionConflict is True when another actor keeps reverting images
	// imagepin wrote, and imagepin has stopped writing that workload.
	ConditionConflict = "Conflict"
	// ConditionVerified, with spec.verify set, is True when every digest
	// the selected images resolve to or pin verifies.
	ConditionVerified = "Verified"
	// ConditionRollbackReady is True when every digest in
	// status.images[].history is still in the registry: a rollback
	// override to any of them can be written.
	ConditionRollbackReady = "RollbackReady"
	// ConditionRetained, with spec.retention.protect set (or keep tags
	// still to delete), is True when every digest to keep has its keep
	// tag in the registry.
	ConditionRetained = "Retained"
)

// Condition reasons an ImagePin reports.
const (
	// ReasonResolved (Ready=True): every selected image resolved.
	ReasonResolved = "Resolved"
	// ReasonInvalidSpec (Ready=False): the spec cannot be honoured; the
	// message says which field and why. Fix the spec: nothing is retried
	// until it changes.
	ReasonInvalidSpec = "InvalidSpec"
	// ReasonSuspended (Ready=False): spec.suspend is true.
	ReasonSuspended = "Suspended"
	// ReasonResolutionFailed (Ready=False): at least one image could not be
	// resolved; the message names them.
	ReasonResolutionFailed = "ResolutionFailed"
	// ReasonNoDrift (Drifted=False): every selected container runs what its
	// tag means.
	ReasonNoDrift = "NoDrift"
	// ReasonNoConflict (Conflict=False): nobody reverts imagepin's writes.
	ReasonNoConflict = "NoConflict"
	// ReasonImageReverted (Conflict=True): another field manager keeps
	// setting an image back.
	ReasonImageReverted = "ImageReverted"
	// ReasonSignaturesVerified (Verified=True): every digest verifies.
	ReasonSignaturesVerified = "SignaturesVerified"
	// ReasonUnverified (Verified=False): a digest does not verify; the
	// message names the image, the digest and why.
	ReasonUnverified = "Unverified"
	// ReasonVerifyConfigError (Verified=False): spec.verify's keys or
	// trusted root cannot be read or parsed; the message names the field.
	// Nothing is written until they can.
	ReasonVerifyConfigError = "VerifyConfigError"
	// ReasonDigestsAvailable (RollbackReady=True): the registry has every
	// digest in history.
	ReasonDigestsAvailable = "DigestsAvailable"
	// ReasonDigestsGone (RollbackReady=False): the registry no longer has
	// some digests of history; the message names them. A rollback to one
	// of them is refused.
	ReasonDigestsGone = "DigestsGone"
	// ReasonAvailabilityUnknown (RollbackReady=Unknown): not every digest
	// of history has been checked yet, or the registry did not answer.
	ReasonAvailabilityUnknown = "AvailabilityUnknown"
	// ReasonOverrideDigestGone (Ready=False): an override names a digest
	// the registry does not have; it is not written, and the workloads run
	// what they run. The message names spec.overrides[i].digest.
	ReasonOverrideDigestGone = "OverrideDigestGone"
	// ReasonDigestsKept (Retained=True): every digest to keep has its
	// keep tag, and no tag is left to delete.
	ReasonDigestsKept = "DigestsKept"
	// ReasonPushRefused (Retained=False): the registry refused the
	// credentials a keep tag is pushed or deleted with (401 or 403); the
	// message names the repository and the credentials tried. Give
	// spec.retention.pushSecretRef a Secret that may push.
	ReasonPushRefused = "PushRefused"
	// ReasonRetentionFailed (Retained=False): a keep tag could not be
	// pushed or deleted for another reason (the registry did not answer,
	// pushSecretRef is missing or malformed, a tag of that name points
	// elsewhere); the message says which and why. It is retried with each
	// check.
	ReasonRetentionFailed = "RetentionFailed"
)

// ImagePinStatus is what imagepin last saw. It stays bounded however many
// workloads match: entries left out are counted in summary and said in the
// Ready condition's message.
type ImagePinStatus struct {
	// observedGeneration is the spec generation this status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// lastCheckTime is when the workloads were last listed and their images
	// last resolved.
	// +optional
	LastCheckTime *metav1.Time `json:"lastCheckTime,omitempty"`

	// summary counts what this ImagePin selects.
	// +optional
	Summary Summary `json:"summary,omitzero"`

	// conditions: Ready, Drifted and Conflict.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=8
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// images lists every selected image reference with what it resolves to
	// and which workload containers use it.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=256
	Images []ImageStatus `json:"images,omitempty"`

	// keepTags lists the tags imagepin pushed to keep digests in the
	// registry (spec.retention.protect) and has not deleted yet: the only
	// tags it ever deletes. With protect turned off, they are deleted.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=512
	KeepTags []KeepTag `json:"keepTags,omitempty"`
}

// Summary counts what an ImagePin selects.
type Summary struct {
	// workloads is the number of selected workloads.
	// +optional
	Workloads int32 `json:"workloads"`
	// images is the number of distinct selected image references.
	// +optional
	Images int32 `json:"images"`
	// pinned is the number of selected workload containers whose spec names
	// a digest.
	// +optional
	Pinned int32 `json:"pinned"`
	// drifted is the number of selected workload containers with at least
	// one drift reason.
	// +optional
	Drifted int32 `json:"drifted"`
	// omitted is the number of workload container entries left out of
	// status.images to keep the status small; they are counted above.
	// +optional
	Omitted int32 `json:"omitted,omitempty"`
}

// ImageStatus is one image reference and where it runs.
type ImageStatus struct {
	// image is the reference as the workload names it, digest removed.
	// +required
	// +kubebuilder:validation:MaxLength=512
	Image string `json:"image"`

	// digest is what the tag resolves to now: the index digest for a
	// multi-arch image. Kept from the last good resolution when the
	// registry fails.
	// +optional
	Digest Digest `json:"digest,omitempty"`

	// resolvedAt is when digest was last confirmed by the registry.
	// +optional
	ResolvedAt *metav1.Time `json:"resolvedAt,omitempty"`

	// error is the last resolution error, empty when the last resolution
	// succeeded.
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	Error string `json:"error,omitempty"`

	// verification is what signature verification said of digest, with
	// spec.verify set.
	// +optional
	Verification *Verification `json:"verification,omitempty"`

	// history lists digests this tag has pointed to, newest first, capped
	// at 10: where to find a digest to roll back to.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=10
	History []DigestRecord `json:"history,omitempty"`

	// workloads lists the workload containers that use this image.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=256
	Workloads []WorkloadImage `json:"workloads,omitempty"`
}

// DigestRecord is one digest a tag pointed to.
type DigestRecord struct {
	// digest the tag pointed to.
	// +required
	Digest Digest `json:"digest"`
	// firstSeen is when imagepin first saw the tag point to digest.
	// +required
	FirstSeen metav1.Time `json:"firstSeen"`
	// verification is what signature verification last said of digest,
	// with spec.verify set (verified and reason; the message is in
	// images[].verification): whether it is a digest to roll back to.
	// +optional
	Verification *Verification `json:"verification,omitempty"`
	// available says whether the registry still has digest: false once a
	// HEAD by digest answers 404 (its garbage collection deleted it), and
	// a rollback to it is refused. Absent until first checked.
	// +optional
	Available *bool `json:"available,omitempty"`
	// checkedAt is when available was last found (spec.retention).
	// +optional
	CheckedAt *metav1.Time `json:"checkedAt,omitempty"`
}

// WorkloadImage is one container of one workload that uses an image.
type WorkloadImage struct {
	// namespace of the workload, in a ClusterImagePin's status; empty in
	// an ImagePin's, whose namespace it is.
	// +optional
	// +kubebuilder:validation:MaxLength=63
	Namespace string `json:"namespace,omitempty"`
	// kind of the workload.
	// +required
	Kind WorkloadKind `json:"kind"`
	// name of the workload, in the ImagePin's namespace.
	// +required
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`
	// container is the container's name, or the volume's for an image
	// volume.
	// +required
	// +kubebuilder:validation:MaxLength=253
	Container string `json:"container"`
	// template names the pod template of the workload the container is
	// in, for a configured kind with several (a PyTorchJob's "Worker");
	// empty for a kind with one.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	Template string `json:"template,omitempty"`
	// init is true for an init container.
	// +optional
	Init bool `json:"init,omitempty"`
	// volume is true for an image volume (spec.volumes[].image.reference),
	// which container then names.
	// +optional
	Volume bool `json:"volume,omitempty"`
	// pinnedDigest is the digest written in the workload spec; empty when
	// the spec names the tag only.
	// +optional
	PinnedDigest Digest `json:"pinnedDigest,omitempty"`
	// running lists the digests the workload's pods run for this
	// container, read from their status.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=8
	Running []RunningDigest `json:"running,omitempty"`
	// drift lists how this container differs from what its tag means;
	// empty when it does not.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=7
	Drift []DriftReason `json:"drift,omitempty"`
}

// RunningDigest is one digest a workload's pods run.
type RunningDigest struct {
	// digest the pods run.
	// +required
	Digest Digest `json:"digest"`
	// pods is how many pods run it.
	// +required
	Pods int32 `json:"pods"`
	// nodes the pods run on, sorted, capped at 16.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:items:MaxLength=253
	Nodes []string `json:"nodes,omitempty"`
}

// ImagePin pins the images of the workloads it selects to digests, and
// reports where what runs differs from what the tag means.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=ipin,categories=imagepin
// +kubebuilder:printcolumn:name="Mode",type=string,JSONPath=`.spec.mode`
// +kubebuilder:printcolumn:name="Workloads",type=integer,JSONPath=`.status.summary.workloads`
// +kubebuilder:printcolumn:name="Images",type=integer,JSONPath=`.status.summary.images`
// +kubebuilder:printcolumn:name="Pinned",type=integer,JSONPath=`.status.summary.pinned`
// +kubebuilder:printcolumn:name="Drifted",type=integer,JSONPath=`.status.summary.drifted`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:printcolumn:name="Last Check",type=date,JSONPath=`.status.lastCheckTime`,priority=1
type ImagePin struct {
	metav1.TypeMeta `json:",inline"`

	// metadata is the object's metadata.
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec says which workloads to watch and what to do with them.
	// +required
	Spec ImagePinSpec `json:"spec"`

	// status is what imagepin last saw.
	// +optional
	Status ImagePinStatus `json:"status,omitzero"`
}

// ImagePinList is a list of ImagePins.
// +kubebuilder:object:root=true
type ImagePinList struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the list's metadata.
	// +optional
	metav1.ListMeta `json:"metadata,omitempty"`
	// items are the ImagePins.
	Items []ImagePin `json:"items"`
}
