package config

import (
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	tests := []struct {
		in      string
		want    int64
		wantErr string
	}{
		{in: "8G", want: 8 << 30},
		{in: "512M", want: 512 << 20},
		{in: "1024K", want: 1 << 20},
		{in: "2T", want: 2 << 40},
		{in: "4096", want: 4096},
		{in: "4096B", want: 4096},
		{in: "8GiB", want: 8 << 30},
		{in: "8GB", want: 8 << 30},
		{in: "8g", want: 8 << 30},
		{in: " 1 G ", want: 1 << 30},
		{in: "8X", wantErr: `disk size "8X": unknown unit X; use K, M, G or T`},
		{in: "8PB", wantErr: "unknown unit PB"},
		{in: "", wantErr: "empty"},
		{in: "G", wantErr: "no number"},
		{in: "-1G", wantErr: "no number"},
		{in: "1.5G", wantErr: "whole number"},
		{in: "0", wantErr: "greater than zero"},
		{in: "0G", wantErr: "greater than zero"},
		{in: "9000000000T", wantErr: "too large"},
		{in: "99999999999999999999", wantErr: "too large"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseSize(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseSize(%q) = %d, %v; want error containing %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseSize(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestFormatSizeRoundTrips(t *testing.T) {
	tests := []struct {
		bytes int64
		want  string
	}{
		{8 << 30, "8G"},
		{1536 << 20, "1536M"},
		{2 << 40, "2T"},
		{1 << 10, "1K"},
		{1000, "1000"},
	}
	for _, tt := range tests {
		got := FormatSize(tt.bytes)
		if got != tt.want {
			t.Errorf("FormatSize(%d) = %q, want %q", tt.bytes, got, tt.want)
		}
		back, err := ParseSize(got)
		if err != nil || back != tt.bytes {
			t.Errorf("ParseSize(FormatSize(%d)) = %d, %v", tt.bytes, back, err)
		}
	}
}
