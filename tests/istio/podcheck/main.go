// podcheck validates Pod manifests the way the Kubernetes API server does when a Pod is
// created: defaults applied to the v1 object, conversion to the internal type, then the API
// server's own ValidatePodCreate with the options its pod strategy derives from the spec. It
// is the check that rejects a pod with two containers of one name or a container without an
// image, run here without a cluster.
//
// Usage: podcheck FILE... (each one Pod, YAML or JSON). Prints every error as
// "FILE: field: message" and exits 1 if there was any, else prints "FILE: valid".
package main

import (
	"fmt"
	"os"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/kubernetes/pkg/api/legacyscheme"
	podutil "k8s.io/kubernetes/pkg/api/pod"
	api "k8s.io/kubernetes/pkg/apis/core"
	_ "k8s.io/kubernetes/pkg/apis/core/install" // registers v1 defaulting and conversion
	"k8s.io/kubernetes/pkg/apis/core/validation"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: podcheck FILE...")
		os.Exit(2)
	}
	failed := false
	for _, path := range os.Args[1:] {
		errs, err := check(path)
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", path, err)
			os.Exit(2)
		}
		for _, e := range errs {
			fmt.Printf("%s: %s\n", path, e)
			failed = true
		}
		if len(errs) == 0 {
			fmt.Printf("%s: valid\n", path)
		}
	}
	if failed {
		os.Exit(1)
	}
}

func check(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var pod corev1.Pod
	if err := yaml.NewYAMLOrJSONDecoder(f, 4096).Decode(&pod); err != nil {
		return nil, fmt.Errorf("decoding: %v", err)
	}
	if pod.Kind != "Pod" {
		return nil, fmt.Errorf("kind %q, want Pod", pod.Kind)
	}
	// What the API server does before validating: defaults, then the internal type.
	legacyscheme.Scheme.Default(&pod)
	var internal api.Pod
	if err := legacyscheme.Scheme.Convert(&pod, &internal, nil); err != nil {
		return nil, fmt.Errorf("converting: %v", err)
	}
	if internal.Namespace == "" {
		// The API server takes it from the request path.
		internal.Namespace = "default"
	}
	opts := podutil.GetValidationOptionsFromPodSpecAndMeta(&internal.Spec, nil, &internal.ObjectMeta, nil)
	var out []string
	for _, e := range validation.ValidatePodCreate(&internal, opts) {
		out = append(out, e.Error())
	}
	return out, nil
}
