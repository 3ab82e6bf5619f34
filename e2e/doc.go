// Package e2e holds imagepin's end-to-end tests: they drive the real control
// plane from bin/ with kubectl, as a user does. Today they install imagepin
// from config/default; the mutable-tag story (re-pushed tags, a node
// simulator, Pin and Follow) joins them as those features land.
package e2e
