package rootdisk

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// The Create benchmarks use sparse bases of 1 and 8 GiB with 1/32 of the
// size written as data (32 MiB and 256 MiB, in 1 MiB runs spread over the
// file), so the 8G/1G ratio shows whether a strategy's cost grows with the
// image: qcow2 and reflink should stay flat, copy should grow with the data.

func BenchmarkCreateQCOW2_1G(b *testing.B) { benchCreate(b, QCOW2, 1<<30) }
func BenchmarkCreateQCOW2_8G(b *testing.B) { benchCreate(b, QCOW2, 8<<30) }

func BenchmarkCreateReflink_1G(b *testing.B) { benchCreate(b, Reflink, 1<<30) }
func BenchmarkCreateReflink_8G(b *testing.B) { benchCreate(b, Reflink, 8<<30) }

func BenchmarkCreateCopy_1G(b *testing.B) { benchCreate(b, Copy, 1<<30) }
func BenchmarkCreateCopy_8G(b *testing.B) { benchCreate(b, Copy, 8<<30) }

func benchCreate(b *testing.B, s Strategy, size int64) {
	ctx := context.Background()
	var dir string
	switch s {
	case QCOW2:
		needTools(b, "qemu-img")
		dir = b.TempDir()
	case Reflink:
		dir, _ = mountLoop(b, "xfs", 2*size)
	case Copy:
		dir = extDir(b)
	}
	base := filepath.Join(dir, "rootfs.ext4")
	const run = mib
	var regions []region
	for off := int64(0); off < size; off += 32 * run {
		regions = append(regions, region{off, run})
	}
	makeBase(b, base, size, regions...)
	i := 0
	for b.Loop() {
		path := filepath.Join(dir, "root-"+strconv.Itoa(i))
		i++
		if _, err := Create(ctx, host(), s, base, path); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := os.Remove(path); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(size/32)/mib, "MiB-data")
}
