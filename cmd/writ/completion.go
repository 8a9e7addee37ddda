package main

import (
	"fmt"
	"io"

	"github.com/urfave/cli/v2"
)

// Shell completion. The scripts ask the writ binary itself for the words
// that may follow (urfave/cli's --generate-bash-completion), so they stay
// right as commands and flags change; fish gets a static script generated
// from the command tree.

const bashCompletion = `# bash completion for writ; load with: source <(writ completion bash)
_writ_complete() {
	local cur words
	cur="${COMP_WORDS[COMP_CWORD]}"
	if [[ "$cur" == -* ]]; then
		words=$("${COMP_WORDS[@]:0:$COMP_CWORD}" "$cur" --generate-bash-completion 2>/dev/null)
	else
		words=$("${COMP_WORDS[@]:0:$COMP_CWORD}" --generate-bash-completion 2>/dev/null)
	fi
	COMPREPLY=($(compgen -W "$words" -- "$cur"))
	return 0
}
complete -o bashdefault -o default -F _writ_complete writ
`

const zshCompletion = `#compdef writ
# zsh completion for writ; load with: source <(writ completion zsh)
_writ() {
	local -a opts
	local cur="${words[-1]}"
	if [[ "$cur" == -* ]]; then
		opts=("${(@f)$(_CLI_ZSH_AUTOCOMPLETE_HACK=1 ${words[@]:0:#words[@]-1} "$cur" --generate-bash-completion 2>/dev/null)}")
	else
		opts=("${(@f)$(_CLI_ZSH_AUTOCOMPLETE_HACK=1 ${words[@]:0:#words[@]-1} --generate-bash-completion 2>/dev/null)}")
	fi
	if [[ -n "${opts[1]}" ]]; then
		_describe 'values' opts
	else
		_files
	fi
}
if [[ "$(basename -- ${(%):-%x})" != "_writ" ]]; then
	compdef _writ writ
fi
`

func completionCommand() *cli.Command {
	return &cli.Command{
		Name:      "completion",
		Usage:     "print a shell completion script (bash, zsh or fish)",
		ArgsUsage: "bash|zsh|fish",
		Description: "Load it in the current shell, e.g. `source <(writ completion bash)`, or install it:\n" +
			"bash: writ completion bash > /etc/bash_completion.d/writ\n" +
			"zsh:  writ completion zsh > \"${fpath[1]}/_writ\"\n" +
			"fish: writ completion fish > ~/.config/fish/completions/writ.fish",
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usagef(c, "want one shell: bash, zsh or fish")
			}
			w := c.App.Writer
			switch shell := c.Args().First(); shell {
			case "bash":
				_, err := io.WriteString(w, bashCompletion)
				return err
			case "zsh":
				_, err := io.WriteString(w, zshCompletion)
				return err
			case "fish":
				script, err := c.App.ToFishCompletion()
				if err != nil {
					return fmt.Errorf("fish completion: %w", err)
				}
				_, err = io.WriteString(w, script)
				return err
			default:
				return usagef(c, "unknown shell %q: want bash, zsh or fish", shell)
			}
		},
	}
}
