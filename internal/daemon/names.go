package daemon

import (
	"crypto/rand"
	"math/big"
	"regexp"

	"banger/internal/api"
)

var vmNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

// validateVMName enforces names that are valid DNS labels and file names.
func validateVMName(name string) error {
	if !vmNameRE.MatchString(name) {
		return api.Errorf(api.CodeBadRequest,
			"invalid VM name %q: use 1-63 lowercase letters, digits and '-', starting with a letter or digit", name)
	}
	return nil
}

var (
	nameAdjectives = []string{"amber", "brave", "calm", "deft", "eager", "fleet", "gentle", "hardy", "ivory", "jolly",
		"keen", "lucid", "mellow", "nimble", "olive", "plucky", "quiet", "rapid", "sunny", "tidy", "upbeat", "vivid",
		"witty", "young", "zesty"}
	nameNouns = []string{"otter", "falcon", "badger", "heron", "lynx", "marten", "puffin", "raven", "salmon", "tapir",
		"walrus", "yak", "bison", "crane", "dingo", "egret", "ferret", "gecko", "ibis", "jackal", "koala", "lemur",
		"moose", "newt", "osprey"}
)

// randomVMName returns a readable name such as "plucky-otter-42".
func randomVMName() string {
	pick := func(list []string) string {
		n, _ := rand.Int(rand.Reader, big.NewInt(int64(len(list))))
		return list[n.Int64()]
	}
	n, _ := rand.Int(rand.Reader, big.NewInt(100))
	return pick(nameAdjectives) + "-" + pick(nameNouns) + "-" + n.String()
}

var artifactNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)
