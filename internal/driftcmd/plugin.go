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

package driftcmd

import (
	"io"
	"path/filepath"
	"strings"
)

// PluginName is the name the imagepin binary takes as a kubectl plugin:
// `kubectl imagepin drift -A` runs `kubectl-imagepin drift -A`.
const PluginName = "kubectl-imagepin"

// Subcommands are the subcommands of the imagepin binary.
var Subcommands = []string{"drift", "pin"}

const pluginUsage = "usage: kubectl imagepin drift|pin [flags] (kubectl imagepin drift -h for drift's flags)"

// Subcommand says what a command line (os.Args) asks main for: name is the
// subcommand args[1] names, with rest its arguments, or "" for none;
// plugin is whether the binary runs as the kubectl plugin, which must
// never start the manager (PluginUsage then says what it does).
func Subcommand(args []string) (name string, rest []string, plugin bool) {
	if len(args) > 0 {
		base := strings.TrimSuffix(filepath.Base(args[0]), ".exe")
		plugin = base == PluginName
	}
	if len(args) > 1 {
		for _, s := range Subcommands {
			if args[1] == s {
				return s, args[2:], plugin
			}
		}
	}
	return "", nil, plugin
}

// PluginUsage is what the kubectl plugin does with a command line that
// names no subcommand (args being os.Args): -h, --help or help print its
// usage on stdout (exit 0); anything else, or nothing, is an error (exit
// 2), said on stderr.
func PluginUsage(args []string, stdout, stderr io.Writer) int {
	if len(args) < 2 {
		say(stderr, pluginUsage)
		return ExitError
	}
	switch args[1] {
	case "-h", "-help", "--help", "help":
		say(stdout, pluginUsage)
		return ExitOK
	}
	sayf(stderr, "kubectl imagepin: unknown command %q\n", args[1])
	say(stderr, pluginUsage)
	return ExitError
}
