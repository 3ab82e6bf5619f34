// Package promcheck holds the tests of config/prometheus: the rules and
// the dashboard are valid, alerts.yaml follows rules.yaml, every metric
// they use is one imagepin exports (promcheck_test.go), and each alert
// fires when, and only when, it should (alerts_eval_test.go).
package promcheck
