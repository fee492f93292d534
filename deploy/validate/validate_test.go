package validate

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/common/util"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/engine"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	kjson "k8s.io/apimachinery/pkg/runtime/serializer/json"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"
)

const (
	repoRoot     = "../.."
	manifestsDir = repoRoot + "/deploy/kubernetes"
	chartDir     = repoRoot + "/charts/torus"
)

// object is one decoded manifest document.
type object struct {
	source string // file (and document number)
	gvk    schema.GroupVersionKind
	obj    runtime.Object
}

func (o object) name() string {
	m, err := metaOf(o.obj)
	if err != nil {
		return "?"
	}
	return m.GetNamespace() + "/" + m.GetName()
}

func (o object) key() string { return o.gvk.Kind + " " + o.name() }

// VolumeSnapshotClass is snapshot.storage.k8s.io/v1 VolumeSnapshotClass as
// the external-snapshotter v8 client defines it (its client module is not
// served here), decoded strictly like the rest.
type VolumeSnapshotClass struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Driver            string            `json:"driver"`
	Parameters        map[string]string `json:"parameters,omitempty"`
	DeletionPolicy    string            `json:"deletionPolicy"`
}

func (in *VolumeSnapshotClass) DeepCopyObject() runtime.Object {
	out := *in
	in.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	if in.Parameters != nil {
		out.Parameters = make(map[string]string, len(in.Parameters))
		for k, v := range in.Parameters {
			out.Parameters[k] = v
		}
	}
	return &out
}

var snapshotGVK = schema.GroupVersionKind{Group: "snapshot.storage.k8s.io", Version: "v1", Kind: "VolumeSnapshotClass"}

func metaOf(o runtime.Object) (metav1.Object, error) {
	m, ok := o.(metav1.Object)
	if !ok {
		return nil, fmt.Errorf("%T has no metadata", o)
	}
	return m, nil
}

// decodeAll decodes every YAML document of data strictly.
func decodeAll(source string, data []byte) ([]object, error) {
	strict := kjson.NewSerializerWithOptions(kjson.DefaultMetaFactory, scheme.Scheme, scheme.Scheme,
		kjson.SerializerOptions{Yaml: true, Strict: true})
	var out []object
	for i, doc := range splitDocs(data) {
		src := fmt.Sprintf("%s#%d", source, i)
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &tm); err != nil {
			return nil, fmt.Errorf("%s: %w", src, err)
		}
		gvk := tm.GroupVersionKind()
		if gvk.Kind == "" || gvk.Version == "" {
			return nil, fmt.Errorf("%s: no apiVersion/kind", src)
		}
		if gvk == snapshotGVK {
			j, err := yaml.YAMLToJSONStrict(doc)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", src, err)
			}
			d := json.NewDecoder(bytes.NewReader(j))
			d.DisallowUnknownFields()
			var c VolumeSnapshotClass
			if err := d.Decode(&c); err != nil {
				return nil, fmt.Errorf("%s: %s: %w", src, gvk.Kind, err)
			}
			out = append(out, object{src, gvk, &c})
			continue
		}
		if !scheme.Scheme.Recognizes(gvk) {
			return nil, fmt.Errorf("%s: %s is not a type of the pinned Kubernetes API", src, gvk)
		}
		obj, got, err := strict.Decode(doc, nil, nil)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", src, err)
		}
		out = append(out, object{src, *got, obj})
	}
	return out, nil
}

// splitDocs splits a YAML stream at "---" lines and drops empty documents
// (only comments or blank).
func splitDocs(data []byte) [][]byte {
	var docs [][]byte
	for _, d := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(data), -1) {
		empty := true
		for _, l := range strings.Split(d, "\n") {
			if t := strings.TrimSpace(l); t != "" && !strings.HasPrefix(t, "#") {
				empty = false
			}
		}
		if !empty {
			docs = append(docs, []byte(d))
		}
	}
	return docs
}

func loadManifests(t *testing.T) []object {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(manifestsDir, "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests in %s: %v", manifestsDir, err)
	}
	var all []object
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		objs, err := decodeAll(filepath.Base(f), data)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, objs...)
	}
	return all
}

func renderChart(t *testing.T, values map[string]any) []object {
	t.Helper()
	objs, err := render(values)
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

// render is `helm template torus charts/torus --namespace torus` with
// values over the chart's own, through helm's chart loader and engine.
func render(values map[string]any) ([]object, error) {
	ch, err := loader.Load(chartDir)
	if err != nil {
		return nil, err
	}
	vals, err := util.ToRenderValues(ch, values, common.ReleaseOptions{Name: "torus", Namespace: "torus", IsInstall: true, Revision: 1}, nil)
	if err != nil {
		return nil, err
	}
	eng := engine.Engine{Strict: true}
	files, err := eng.Render(ch, vals)
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	var all []object
	for _, n := range names {
		if !strings.HasSuffix(n, ".yaml") {
			continue
		}
		objs, err := decodeAll(n, []byte(files[n]))
		if err != nil {
			return nil, err
		}
		all = append(all, objs...)
	}
	return all, nil
}

func TestManifests(t *testing.T) {
	objs := loadManifests(t)
	checkObjects(t, objs, flagSets(t))
	want := []string{"Namespace", "ConfigMap", "CSIDriver", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
		"Role", "RoleBinding", "Deployment", "DaemonSet", "StorageClass", "VolumeSnapshotClass"}
	have := map[string]int{}
	for _, o := range objs {
		have[o.gvk.Kind]++
	}
	for _, k := range want {
		if have[k] == 0 {
			t.Errorf("no %s in %s", k, manifestsDir)
		}
	}
	if have["DaemonSet"] != 2 {
		t.Errorf("%d DaemonSets, want 2 (CSI node plugin, torusd)", have["DaemonSet"])
	}
}

// TestChartMatchesManifests: the chart with its default values renders
// exactly the objects of deploy/kubernetes (less the Namespace, which helm
// creates), so the two cannot drift apart.
func TestChartMatchesManifests(t *testing.T) {
	sets := flagSets(t)
	chart := renderChart(t, nil)
	checkObjects(t, chart, sets)
	byKey := map[string]object{}
	for _, o := range chart {
		byKey[o.key()] = o
	}
	for _, m := range loadManifests(t) {
		if m.gvk.Kind == "Namespace" {
			continue
		}
		c, ok := byKey[m.key()]
		if !ok {
			t.Errorf("%s (%s) is not rendered by the chart", m.key(), m.source)
			continue
		}
		delete(byKey, m.key())
		if !equality.Semantic.DeepEqual(m.obj, c.obj) {
			mj, _ := json.MarshalIndent(m.obj, "", " ")
			cj, _ := json.MarshalIndent(c.obj, "", " ")
			t.Errorf("%s differs between %s and the chart's %s:\nmanifest: %s\nchart:    %s", m.key(), m.source, c.source, mj, cj)
		}
	}
	for k, c := range byKey {
		t.Errorf("the chart renders %s (%s), which deploy/kubernetes does not have", k, c.source)
	}
}

// TestChartValues: the values a user sets reach the objects.
func TestChartValues(t *testing.T) {
	objs := renderChart(t, map[string]any{
		"image":        map[string]any{"repository": "registry.example/torus", "tag": "v9.9.9"},
		"etcd":         map[string]any{"endpoints": "https://etcd-a:2379,https://etcd-b:2379", "tls": map[string]any{"enabled": true, "secretName": "my-etcd-certs"}},
		"peerTLS":      map[string]any{"enabled": true, "daemonSecretName": "my-daemon-cert", "clientSecretName": "my-client-cert"},
		"storageClass": map[string]any{"replication": "3", "minReplicas": "2", "fsType": "xfs"},
		"node":         map[string]any{"kubeletDir": "/data/kubelet"},
	})
	checkObjects(t, objs, flagSets(t))
	var sawSecret, sawImage int
	for _, o := range objs {
		switch x := o.obj.(type) {
		case *corev1.ConfigMap:
			if x.Data["TORUS_ETCD"] != "https://etcd-a:2379,https://etcd-b:2379" || x.Data["TORUS_ETCD_CERT"] != "/etc/torus/etcd-tls/tls.crt" ||
				x.Data["TORUS_ETCD_KEY"] != "/etc/torus/etcd-tls/tls.key" || x.Data["TORUS_ETCD_CA"] != "/etc/torus/etcd-tls/ca.crt" ||
				x.Data["TORUS_PEER_CERT"] != "/etc/torus/peer-tls/tls.crt" || x.Data["TORUS_PEER_KEY"] != "/etc/torus/peer-tls/tls.key" ||
				x.Data["TORUS_PEER_CA"] != "/etc/torus/peer-tls/ca.crt" {
				t.Errorf("ConfigMap %s: %v", x.Name, x.Data)
			}
		case *storagev1.StorageClass:
			if x.Parameters["replication"] != "3" || x.Parameters["minReplicas"] != "2" || x.Parameters["csi.storage.k8s.io/fstype"] != "xfs" {
				t.Errorf("StorageClass parameters %v", x.Parameters)
			}
		}
		spec := podSpec(o.obj)
		if spec == nil {
			continue
		}
		for _, v := range spec.Volumes {
			if v.Secret != nil {
				want := map[string]string{"etcd-tls": "my-etcd-certs", "peer-tls": "my-client-cert"}[v.Name]
				if o.gvk.Kind == "DaemonSet" && o.name() == "torus/torusd" && v.Name == "peer-tls" {
					want = "my-daemon-cert"
				}
				if v.Secret.SecretName != want || v.Secret.Optional == nil || *v.Secret.Optional {
					t.Errorf("%s: volume %s: secret %s optional %v, want %s required", o.key(), v.Name, v.Secret.SecretName, v.Secret.Optional, want)
				}
				sawSecret++
			}
			if v.HostPath != nil && strings.HasPrefix(v.HostPath.Path, "/var/lib/kubelet") {
				t.Errorf("%s: hostPath %s ignores node.kubeletDir", o.key(), v.HostPath.Path)
			}
		}
		for _, c := range spec.Containers {
			if strings.Contains(c.Image, "torus") && !strings.HasPrefix(c.Image, "registry.k8s.io/") {
				if c.Image != "registry.example/torus:v9.9.9" {
					t.Errorf("%s: container %s image %s", o.key(), c.Name, c.Image)
				}
				sawImage++
			}
		}
	}
	if sawSecret != 6 || sawImage != 3 {
		t.Errorf("%d secret volumes and %d Torus containers, want 6 and 3", sawSecret, sawImage)
	}
}

// TestChecksCatch: the checks fail on what they are meant to catch.
func TestChecksCatch(t *testing.T) {
	for name, doc := range map[string]string{
		"unknown field":   "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata: {name: x}\nprovisioner: csi.torus.io\nallowVolumeExpension: true\n",
		"duplicate field": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {a: b}\ndata: {c: d}\n",
		"unknown kind":    "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: x}\n",
		"snapshot class":  "apiVersion: snapshot.storage.k8s.io/v1\nkind: VolumeSnapshotClass\nmetadata: {name: x}\ndriver: d\ndeletionPolicy: Delete\nparameter: {}\n",
		"wrong type":      "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {replicas: two}\n",
	} {
		if _, err := decodeAll(name, []byte(doc)); err == nil {
			t.Errorf("%s: decoded without error", name)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
	sets := flagSets(t)
	for name, c := range map[string]corev1.Container{
		"latest":       {Name: "a", Image: "registry.k8s.io/sig-storage/csi-attacher:latest"},
		"no tag":       {Name: "a", Image: "registry.k8s.io/sig-storage/csi-attacher"},
		"unknown flag": {Name: "a", Image: "x/torus:v1", Command: []string{"/usr/local/bin/torusd"}, Args: []string{"--etcd-endpoints=x"}},
		"bad command":  {Name: "a", Image: "x/torus:v1", Command: []string{"/usr/local/bin/torus-nope"}},
		"positional":   {Name: "a", Image: "x/torus:v1", Command: []string{"/usr/local/bin/torus-csi"}, Args: []string{"controller"}},
		"unset var":    {Name: "a", Image: "x/torus:v1", Command: []string{"/usr/local/bin/torus-csi"}, Args: []string{"--node-id=$(NODE)"}},
	} {
		if errs := checkContainer(c, nil, sets); len(errs) == 0 {
			t.Errorf("%s: no error", name)
		} else {
			t.Logf("%s: %v", name, errs)
		}
	}
}

func podSpec(o runtime.Object) *corev1.PodSpec {
	switch x := o.(type) {
	case *appsv1.Deployment:
		return &x.Spec.Template.Spec
	case *appsv1.DaemonSet:
		return &x.Spec.Template.Spec
	case *appsv1.StatefulSet:
		return &x.Spec.Template.Spec
	}
	return nil
}

// driverName is csi.DefaultDriverName, read from csi/driver.go (this
// module does not import the main one).
func driverName(t *testing.T) string {
	t.Helper()
	src, err := os.ReadFile(filepath.Join(repoRoot, "csi", "driver.go"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`DefaultDriverName\s*=\s*"([^"]+)"`).FindSubmatch(src)
	if m == nil {
		t.Fatal("no DefaultDriverName in csi/driver.go")
	}
	return string(m[1])
}

// checkObjects runs the cross-object checks: pinned images, flags of the
// Torus binaries, environment references, volume mounts, service accounts,
// the driver name and the StorageClass parameters.
func checkObjects(t *testing.T, objs []object, sets map[string]map[string]bool) {
	t.Helper()
	driver := driverName(t)
	configMaps := map[string]map[string]string{}
	accounts := map[string]bool{}
	seen := map[string]string{}
	for _, o := range objs {
		if prev, ok := seen[o.key()]; ok {
			t.Errorf("%s twice: %s and %s", o.key(), prev, o.source)
		}
		seen[o.key()] = o.source
		switch x := o.obj.(type) {
		case *corev1.ConfigMap:
			configMaps[x.Namespace+"/"+x.Name] = x.Data
		case *corev1.ServiceAccount:
			accounts[x.Namespace+"/"+x.Name] = true
		}
	}
	for _, o := range objs {
		switch x := o.obj.(type) {
		case *storagev1.CSIDriver:
			if x.Name != driver {
				t.Errorf("%s: CSIDriver %s, the driver is %s", o.source, x.Name, driver)
			}
		case *storagev1.StorageClass:
			if x.Provisioner != driver {
				t.Errorf("%s: provisioner %s, the driver is %s", o.source, x.Provisioner, driver)
			}
			for k := range x.Parameters {
				if k != "replication" && k != "minReplicas" && !strings.HasPrefix(k, "csi.storage.k8s.io/") {
					t.Errorf("%s: parameter %s is refused by CreateVolume", o.source, k)
				}
			}
			if x.AllowVolumeExpansion == nil || !*x.AllowVolumeExpansion {
				t.Errorf("%s: allowVolumeExpansion is not true", o.source)
			}
		case *VolumeSnapshotClass:
			if x.Driver != driver {
				t.Errorf("%s: driver %s, the driver is %s", o.source, x.Driver, driver)
			}
		case *rbacv1.ClusterRoleBinding:
			for _, s := range x.Subjects {
				if s.Kind == "ServiceAccount" && !accounts[s.Namespace+"/"+s.Name] {
					t.Errorf("%s: subject %s/%s is not defined", o.source, s.Namespace, s.Name)
				}
			}
		case *rbacv1.RoleBinding:
			for _, s := range x.Subjects {
				if s.Kind == "ServiceAccount" && !accounts[s.Namespace+"/"+s.Name] {
					t.Errorf("%s: subject %s/%s is not defined", o.source, s.Namespace, s.Name)
				}
			}
		}
		spec := podSpec(o.obj)
		if spec == nil {
			continue
		}
		m, _ := metaOf(o.obj)
		ns := m.GetNamespace()
		if spec.ServiceAccountName != "" && !accounts[ns+"/"+spec.ServiceAccountName] {
			t.Errorf("%s: service account %s is not defined", o.source, spec.ServiceAccountName)
		}
		vols := map[string]bool{}
		for _, v := range spec.Volumes {
			vols[v.Name] = true
		}
		for _, c := range append(append([]corev1.Container{}, spec.InitContainers...), spec.Containers...) {
			for _, vm := range c.VolumeMounts {
				if !vols[vm.Name] {
					t.Errorf("%s: container %s mounts undefined volume %s", o.source, c.Name, vm.Name)
				}
			}
			env := map[string]bool{}
			for _, e := range c.Env {
				env[e.Name] = true
			}
			for _, ef := range c.EnvFrom {
				if ef.ConfigMapRef == nil {
					continue
				}
				data, ok := configMaps[ns+"/"+ef.ConfigMapRef.Name]
				if !ok {
					t.Errorf("%s: container %s: ConfigMap %s is not defined", o.source, c.Name, ef.ConfigMapRef.Name)
				}
				for k := range data {
					env[k] = true
				}
			}
			for _, err := range checkContainer(c, env, sets) {
				t.Errorf("%s: %v", o.source, err)
			}
		}
	}
}

var varRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// checkContainer: the image has an exact tag (not latest); a Torus binary
// gets only flags it has (--name or --name=value, no positional
// arguments); every $(VAR) in the args is defined in env.
func checkContainer(c corev1.Container, env map[string]bool, sets map[string]map[string]bool) []error {
	var errs []error
	img := c.Image
	if i := strings.Index(img, "@"); i >= 0 {
		img = img[:i]
	}
	slash := strings.LastIndex(img, "/")
	colon := strings.LastIndex(img, ":")
	switch {
	case colon <= slash:
		errs = append(errs, fmt.Errorf("container %s: image %s has no tag", c.Name, c.Image))
	case img[colon+1:] == "latest":
		errs = append(errs, fmt.Errorf("container %s: image %s is not pinned", c.Name, c.Image))
	}
	for _, a := range c.Args {
		for _, m := range varRef.FindAllStringSubmatch(a, -1) {
			if !env[m[1]] {
				errs = append(errs, fmt.Errorf("container %s: %s names $(%s), which is not in its environment", c.Name, a, m[1]))
			}
		}
	}
	if len(c.Command) == 0 {
		return errs
	}
	bin := filepath.Base(c.Command[0])
	if !strings.HasPrefix(bin, "torus") {
		return errs
	}
	flags, ok := sets[bin]
	if !ok {
		return append(errs, fmt.Errorf("container %s: command %s is not a Torus binary", c.Name, c.Command[0]))
	}
	for _, a := range append(append([]string{}, c.Command[1:]...), c.Args...) {
		if !strings.HasPrefix(a, "-") {
			errs = append(errs, fmt.Errorf("container %s: %s takes no argument %q", c.Name, bin, a))
			continue
		}
		name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !flags[name] {
			errs = append(errs, fmt.Errorf("container %s: %s has no flag --%s", c.Name, bin, name))
		}
	}
	return errs
}

var helpFlag = regexp.MustCompile(`(?m)^\s+(?:-[a-zA-Z], )?--?([a-z][a-z0-9-]*)\b`)

// flagSets parses `BIN --help` of the built torusd, torus-csi and torusblk
// ($TORUS_BIN, which make test sets; else they are built here).
func flagSets(t *testing.T) map[string]map[string]bool {
	t.Helper()
	dir := os.Getenv("TORUS_BIN")
	if dir == "" {
		dir = t.TempDir()
		cmd := exec.Command("go", "build", "-o", dir+"/", "./cmd/torusd", "./cmd/torus-csi", "./cmd/torusblk")
		cmd.Dir = repoRoot
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build: %v\n%s", err, out)
		}
	}
	sets := map[string]map[string]bool{}
	for _, b := range []string{"torusd", "torus-csi", "torusblk"} {
		out, _ := exec.Command(filepath.Join(dir, b), "--help").CombinedOutput() // flag's -help exits 0 or 2
		set := map[string]bool{}
		for _, m := range helpFlag.FindAllSubmatch(out, -1) {
			set[string(m[1])] = true
		}
		if len(set) < 5 {
			t.Fatalf("%s --help lists %d flags:\n%s", b, len(set), out)
		}
		sets[b] = set
	}
	return sets
}
