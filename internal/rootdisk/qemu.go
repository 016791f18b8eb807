package rootdisk

import (
	"context"
	"encoding/json"
	"fmt"
)

// qemuInfo is the part of `qemu-img info --output=json` rootdisk reads.
type qemuInfo struct {
	Format              string `json:"format"`
	VirtualSize         int64  `json:"virtual-size"`
	FullBackingFilename string `json:"full-backing-filename"`
	BackingFormat       string `json:"backing-filename-format"`
}

// imageInfo runs qemu-img info on path opened as format (never probed).
// With share set it adds -U, which reads an image a running VM holds;
// without it qemu-img fails on such an image, which is how Clone makes
// sure the VM is stopped.
func imageInfo(ctx context.Context, r Runner, path, format string, share bool) (qemuInfo, error) {
	argv := []string{"qemu-img", "info", "--output=json", "-f", format}
	if share {
		argv = append(argv, "-U")
	}
	argv = append(argv, path)
	out, err := r.Run(ctx, argv...)
	if err != nil {
		return qemuInfo{}, err
	}
	var info qemuInfo
	if err := json.Unmarshal(out, &info); err != nil {
		return qemuInfo{}, fmt.Errorf("qemu-img info %s: %w", path, err)
	}
	return info, nil
}
