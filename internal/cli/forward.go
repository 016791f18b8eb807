package cli

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"banger/internal/api"
	"banger/internal/forward"
)

func newVMForwardCommand(app *App) *cobra.Command {
	var udp, list, asJSON bool
	var stop uint16
	cmd := &cobra.Command{
		Use:   "forward NAME GUEST_PORT[:HOST_PORT] | NAME --list | NAME --stop HOST_PORT",
		Short: "Forward a guest port to 127.0.0.1 on the host (run by bangerd; ends when the VM stops)",
		Long: "Forward a running VM's GUEST_PORT to 127.0.0.1:HOST_PORT (default: the same number;\n" +
			"GUEST:0 picks a free one). bangerd runs the forward, so it outlives this command and ends\n" +
			"when the VM stops. --udp forwards UDP; --list shows the VM's forwards; --stop ends one.",
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := app.client(cmd.Context())
			if err != nil {
				return err
			}
			proto := "tcp"
			if udp {
				proto = "udp"
			}
			name := args[0]
			var res api.VMForwardListResult
			switch {
			case list || stop != 0:
				if len(args) != 1 {
					return fmt.Errorf("--list and --stop take only the VM's name")
				}
				if stop != 0 {
					err = c.Call(cmd.Context(), "vm.forward.stop", api.VMForwardParams{Name: name, HostPort: stop, Proto: proto}, &res)
				} else {
					err = c.Call(cmd.Context(), "vm.forward.list", api.VMRef{Name: name}, &res)
				}
				if err != nil {
					return err
				}
				if asJSON {
					return writeJSON(app, res.Forwards)
				}
				if len(res.Forwards) == 0 {
					fmt.Fprintf(app.Stdout, "%s has no forwards\n", name)
					return nil
				}
				tw := tabwriter.NewWriter(app.Stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "HOST\tGUEST\tPROTO\tCONNS\tIN\tOUT")
				for _, f := range res.Forwards {
					fmt.Fprintf(tw, "%s\t%s.vm:%d\t%s\t%d\t%s\t%s\n", f.HostAddr, f.Name, f.GuestPort, f.Proto, f.Conns,
						humanBytes(int64(f.BytesIn)), humanBytes(int64(f.BytesOut)))
				}
				return tw.Flush()
			}
			if len(args) != 2 {
				return fmt.Errorf("give the guest port: banger vm forward %s GUEST_PORT[:HOST_PORT]", name)
			}
			guest, host, err := forward.ParseSpec(args[1])
			if err != nil {
				return err
			}
			var f api.Forward
			if err := c.Call(cmd.Context(), "vm.forward", api.VMForwardParams{Name: name, GuestPort: guest, HostPort: host, Proto: proto}, &f); err != nil {
				return err
			}
			if asJSON {
				return writeJSON(app, f)
			}
			fmt.Fprintf(app.Stdout, "%s → %s.vm:%d (%s); stop it with: banger vm forward %s --stop %s\n",
				f.HostAddr, f.Name, f.GuestPort, f.Proto, f.Name, portOf(f.HostAddr))
			return nil
		},
	}
	cmd.Flags().BoolVar(&udp, "udp", false, "forward UDP instead of TCP")
	cmd.Flags().BoolVar(&list, "list", false, "list the VM's forwards")
	cmd.Flags().Uint16Var(&stop, "stop", 0, "end the forward on this host port")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func portOf(hostAddr string) string {
	for i := len(hostAddr) - 1; i >= 0; i-- {
		if hostAddr[i] == ':' {
			return hostAddr[i+1:]
		}
	}
	return hostAddr
}
