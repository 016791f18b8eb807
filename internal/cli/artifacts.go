package cli

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"banger/internal/api"
)

// rpcCall makes one RPC with the app's client and returns its result.
func rpcCall[T any](ctx context.Context, app *App, method string, params any) (T, error) {
	var res T
	c, err := app.client(ctx)
	if err != nil {
		return res, err
	}
	err = c.Call(ctx, method, params, &res)
	return res, err
}

// readCommand is a command that fetches something and prints it as text
// or, with --json, as JSON.
func readCommand[T any](app *App, use, short string, args cobra.PositionalArgs, fetch func(cmd *cobra.Command, args []string) (T, error), text func(w io.Writer, v T) error) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  args,
		RunE: func(cmd *cobra.Command, args []string) error {
			v, err := fetch(cmd, args)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(app, v)
			}
			return text(app.Stdout, v)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newKernelCommand(app *App) *cobra.Command {
	k := &cobra.Command{Use: "kernel", Short: "Manage guest kernels"}
	k.AddCommand(
		newKernelListCommand(app),
		pullCommand(app, pullSpec{what: "kernel", arg: "NAME", method: "kernel.pull",
			short:           "Build a kernel from the catalog (skipped when installed)",
			params:          func(args []string) any { return api.PullParams{Name: args[0]} },
			installedIsDone: func(string) bool { return true },
		}),
		readCommand(app, "show NAME", "Show a kernel's manifest: files, checksums, the VMMs it suits, who uses it", cobra.ExactArgs(1),
			func(cmd *cobra.Command, args []string) (api.KernelDetails, error) {
				return rpcCall[api.KernelDetails](cmd.Context(), app, "kernel.show", api.ArtifactRef{Name: args[0]})
			}, printKernel),
		readCommand(app, "rm NAME", "Remove a kernel no image or VM uses", cobra.ExactArgs(1),
			func(cmd *cobra.Command, args []string) (api.Kernel, error) {
				return rpcCall[api.Kernel](cmd.Context(), app, "kernel.rm", api.ArtifactRef{Name: args[0]})
			}, func(w io.Writer, k api.Kernel) error {
				_, err := fmt.Fprintf(w, "kernel %s removed\n", k.Name)
				return err
			}),
		newKernelImportCommand(app),
	)
	return k
}

func newKernelListCommand(app *App) *cobra.Command {
	var available bool
	cmd := readCommand(app, "list", "List installed kernels (--available: the catalog)", cobra.NoArgs,
		func(cmd *cobra.Command, _ []string) (any, error) {
			if available {
				res, err := rpcCall[api.KernelCatalogResult](cmd.Context(), app, "kernel.catalog", nil)
				return res.Kernels, err
			}
			res, err := rpcCall[api.KernelListResult](cmd.Context(), app, "kernel.list", nil)
			return res.Kernels, err
		}, func(w io.Writer, v any) error {
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			switch ks := v.(type) {
			case []api.KernelCatalogEntry:
				fmt.Fprintln(tw, "NAME\tINSTALLED\tABOUT")
				for _, k := range ks {
					fmt.Fprintf(tw, "%s\t%s\t%s\n", k.Name, yesNo(k.Installed), k.About)
				}
			case []api.Kernel:
				fmt.Fprintln(tw, "NAME\tVERSION\tARCH\tSOURCE")
				for _, k := range ks {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", k.Name, k.Version, k.Arch, k.Source)
				}
			}
			return tw.Flush()
		})
	cmd.Flags().BoolVar(&available, "available", false, "list the kernels banger can build, marking the installed ones")
	return cmd
}

func newKernelImportCommand(app *App) *cobra.Command {
	var from string
	imp := &cobra.Command{
		Use:   "import NAME --from DIR",
		Short: "Import a kernel directory (vmlinuz, vmlinux, initrd, modules and manifest.json)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			abs, err := filepath.Abs(from)
			if err != nil {
				return err
			}
			res, err := rpcCall[api.Kernel](cmd.Context(), app, "kernel.import", api.KernelImportParams{Name: args[0], From: abs})
			if err != nil {
				return err
			}
			fmt.Fprintf(app.Stdout, "kernel %s (%s) imported\n", res.Name, res.Version)
			return nil
		},
	}
	imp.Flags().StringVar(&from, "from", "", "directory to import")
	_ = imp.MarkFlagRequired("from")
	return imp
}

func printKernel(w io.Writer, k api.KernelDetails) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "name:\t%s\n", k.Name)
	fmt.Fprintf(tw, "version:\t%s (%s)\n", k.Version, k.Arch)
	fmt.Fprintf(tw, "source:\t%s\n", k.Source)
	fmt.Fprintf(tw, "dir:\t%s\n", k.Dir)
	if k.ManifestError != "" {
		fmt.Fprintf(tw, "manifest:\tunreadable: %s\n", k.ManifestError)
	} else {
		fmt.Fprintf(tw, "built:\t%s\n", k.BuiltAt.Format(time.RFC3339))
		fmt.Fprintf(tw, "suits:\t%s\n", orNone(kernelSuits(k)))
		fmt.Fprintf(tw, "cmdline:\t%s\n", k.Cmdline)
		fmt.Fprintf(tw, "modules:\t%s (initrd loads %d)\n", orNone([]string{k.ModulesDir}), len(k.InitrdModules))
	}
	fmt.Fprintf(tw, "images:\t%s\n", orNone(k.Images))
	fmt.Fprintf(tw, "vms:\t%s\n", orNone(k.VMs))
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(k.Files) == 0 {
		return nil
	}
	fmt.Fprintln(w, "files:")
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  ROLE\tPATH\tSIZE\tSHA256")
	for _, f := range k.Files {
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", f.Role, f.Path, humanBytes(f.Size), f.SHA256)
	}
	return tw.Flush()
}

// kernelSuits words which VMMs can boot the kernel and why.
func kernelSuits(k api.KernelDetails) []string {
	why := map[string]string{"qemu": "QEMU (vmlinuz)", "firecracker": "Firecracker (vmlinux with PVH)"}
	var out []string
	for _, s := range k.Suits {
		if w, ok := why[s]; ok {
			s = w
		}
		out = append(out, s)
	}
	return out
}

func newImageCommand(app *App) *cobra.Command {
	im := &cobra.Command{Use: "image", Short: "Manage root filesystem images"}
	cache := &cobra.Command{Use: "cache", Short: "Manage build leftovers"}
	cache.AddCommand(newImageCachePruneCommand(app))
	im.AddCommand(
		readCommand(app, "list", "List images", cobra.NoArgs,
			func(cmd *cobra.Command, _ []string) ([]api.Image, error) {
				res, err := rpcCall[api.ImageListResult](cmd.Context(), app, "image.list", nil)
				return res.Images, err
			}, printImages),
		readCommand(app, "show NAME", "Show an image's manifest: source, sizes, sha256, packages, init, who uses it", cobra.ExactArgs(1),
			func(cmd *cobra.Command, args []string) (api.ImageDetails, error) {
				return rpcCall[api.ImageDetails](cmd.Context(), app, "image.show", api.ArtifactRef{Name: args[0]})
			}, printImage),
		readCommand(app, "delete NAME", "Delete an image no VM uses, with its files", cobra.ExactArgs(1),
			func(cmd *cobra.Command, args []string) (api.Image, error) {
				return rpcCall[api.Image](cmd.Context(), app, "image.delete", api.ArtifactRef{Name: args[0]})
			}, func(w io.Writer, im api.Image) error {
				_, err := fmt.Fprintf(w, "image %s deleted\n", im.Name)
				return err
			}),
		readCommand(app, "promote NAME", "Make an image the default for vm create", cobra.ExactArgs(1),
			func(cmd *cobra.Command, args []string) (api.Image, error) {
				return rpcCall[api.Image](cmd.Context(), app, "image.promote", api.ArtifactRef{Name: args[0]})
			}, func(w io.Writer, im api.Image) error {
				_, err := fmt.Fprintf(w, "image %s is now the default\n", im.Name)
				return err
			}),
		newImageRegisterCommand(app),
		newImagePullCommand(app),
		newImageBuildCommand(app),
		newImageWarmCommand(app),
		cache,
	)
	return im
}

func printImages(w io.Writer, images []api.Image) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tKERNEL\tSIZE\tDEFAULT\tSOURCE")
	for _, i := range images {
		def := ""
		if i.Default {
			def = "*"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", i.Name, i.Kernel, humanBytes(i.SizeBytes), def, i.Source)
	}
	return tw.Flush()
}

func printImage(w io.Writer, im api.ImageDetails) error {
	m := im.Manifest
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "name:\t%s\n", im.Name)
	fmt.Fprintf(tw, "default:\t%s\n", yesNo(im.Default))
	fmt.Fprintf(tw, "kind:\t%s\n", m.Kind)
	fmt.Fprintf(tw, "source:\t%s\n", im.Source)
	if m.Digest != "" {
		fmt.Fprintf(tw, "digest:\t%s\n", m.Digest)
	}
	fmt.Fprintf(tw, "kernel:\t%s\n", joinNonEmpty(im.Kernel, m.KernelVersion))
	fmt.Fprintf(tw, "rootfs:\t%s\n", im.RootfsPath)
	size := humanBytes(im.SizeBytes)
	if m.ContentBytes > 0 {
		size += ", " + humanBytes(m.ContentBytes) + " of files"
	}
	fmt.Fprintf(tw, "size:\t%s\n", size)
	fmt.Fprintf(tw, "sha256:\t%s\n", im.SHA256)
	fmt.Fprintf(tw, "built:\t%s\n", m.BuiltAt.Format(time.RFC3339))
	fmt.Fprintf(tw, "packages:\t%s\n", packagesLine(m))
	if m.Base != "" {
		fmt.Fprintf(tw, "base:\t%s (sha256 %s)\n", m.Base, m.BaseSHA256)
	}
	if m.FromVM != "" {
		fmt.Fprintf(tw, "from vm:\t%s\n", m.FromVM)
	}
	if len(m.BuildPackages) > 0 {
		fmt.Fprintf(tw, "installed:\t%s\n", strings.Join(m.BuildPackages, " "))
	}
	for _, c := range m.Copies {
		fmt.Fprintf(tw, "copied:\t%s\n", c)
	}
	for _, s := range m.Scripts {
		fmt.Fprintf(tw, "script:\t%s (sha256 %s)\n", s.Name, s.SHA256)
	}
	if m.WorkSeed {
		fmt.Fprintf(tw, "/root:\tcarried (work.ext4): each VM's work disk starts as a copy\n")
	}
	if m.BangerVersion != "" {
		fmt.Fprintf(tw, "built by:\tbanger %s\n", m.BangerVersion)
	}
	if m.Init != "" {
		fmt.Fprintf(tw, "init:\t%s\n", m.Init)
	}
	fmt.Fprintf(tw, "used by:\t%s\n", orNone(im.VMs))
	return tw.Flush()
}

func packagesLine(m api.ImageManifest) string {
	n := "unknown"
	if m.Packages >= 0 {
		n = fmt.Sprint(m.Packages)
	}
	if m.PackageManager != "" {
		n += " (" + m.PackageManager + ")"
	}
	return n
}

func newImageRegisterCommand(app *App) *cobra.Command {
	var p api.ImageRegisterParams
	reg := &cobra.Command{
		Use:   "register --name N --rootfs FILE --kernel K",
		Short: "Register an ext4 root filesystem file as an image",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			abs, err := filepath.Abs(p.Rootfs)
			if err != nil {
				return err
			}
			p.Rootfs = abs
			res, err := rpcCall[api.Image](cmd.Context(), app, "image.register", p)
			if err != nil {
				return err
			}
			fmt.Fprintf(app.Stdout, "image %s registered (%s, kernel %s)\n", res.Name, humanBytes(res.SizeBytes), res.Kernel)
			return nil
		},
	}
	reg.Flags().StringVar(&p.Name, "name", "", "image name")
	reg.Flags().StringVar(&p.Rootfs, "rootfs", "", "ext4 root filesystem file")
	reg.Flags().StringVar(&p.Kernel, "kernel", "", "kernel the image boots")
	for _, f := range []string{"name", "rootfs", "kernel"} {
		_ = reg.MarkFlagRequired(f)
	}
	return reg
}

func newImagePullCommand(app *App) *cobra.Command {
	var p api.ImagePullParams
	cmd := pullCommand(app, pullSpec{what: "image", arg: "CATALOG-NAME|OCI-REF", method: "image.pull",
		short: "Build a catalog image, or pull one from a registry (registry.example/library/debian:bookworm)",
		params: func(args []string) any {
			q := p
			q.Source = args[0]
			return q
		},
		// An installed catalog image is done; an OCI image name that is
		// taken is the user's to resolve.
		installedIsDone: func(arg string) bool { return !strings.ContainsAny(arg, "/:@") },
	})
	cmd.Flags().StringVar(&p.Name, "name", "", "image name (OCI only; default: repository and tag, e.g. alpine-3.20)")
	cmd.Flags().StringVar(&p.Size, "size", "", "root filesystem size, e.g. 4G (OCI only; default: 1.5 × the content, at least 1G)")
	cmd.Flags().StringVar(&p.Kernel, "kernel", "", "kernel the image boots (OCI only; default debian-6.1, pulled if missing)")
	return cmd
}

func newImageCachePruneCommand(app *App) *cobra.Command {
	var dryRun bool
	cmd := readCommand(app, "prune", "Remove build leftovers (interrupted pulls and imports)", cobra.NoArgs,
		func(cmd *cobra.Command, _ []string) (api.CachePruneResult, error) {
			return rpcCall[api.CachePruneResult](cmd.Context(), app, "image.cache_prune", api.CachePruneParams{DryRun: dryRun})
		}, printPrune)
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "only list what would be removed")
	return cmd
}

func printPrune(w io.Writer, res api.CachePruneResult) error {
	verb := "removed"
	if res.DryRun {
		verb = "would remove"
	}
	for _, e := range res.Removed {
		fmt.Fprintf(w, "%s %s (%s)\n", verb, e.Path, humanBytes(e.Bytes))
	}
	for _, e := range res.Skipped {
		fmt.Fprintf(w, "kept %s (%s): a pull or import is using it\n", e.Path, humanBytes(e.Bytes))
	}
	if len(res.Removed) == 0 {
		_, err := fmt.Fprintln(w, "nothing to remove")
		return err
	}
	_, err := fmt.Fprintf(w, "%s %s in total\n", verb, humanBytes(res.TotalBytes))
	return err
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func orNone(s []string) string {
	var kept []string
	for _, x := range s {
		if x != "" {
			kept = append(kept, x)
		}
	}
	if len(kept) == 0 {
		return "none"
	}
	return strings.Join(kept, ", ")
}

// joinNonEmpty is "a (b)", or "a" when b is empty.
func joinNonEmpty(a, b string) string {
	if b == "" {
		return a
	}
	return a + " (" + b + ")"
}
