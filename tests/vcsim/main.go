// Command vcsim runs govmomi's vSphere API simulator for Quanta's tests and benchmarks.
//
// Debian ships govmomi's simulator library but not its vcsim program, so this small
// main builds one (see scripts/build-vcsim):
//
//	GOPATH=/usr/share/gocode GO111MODULE=off go build -o vcsim tests/vcsim/main.go
//
// It listens on the given loopback address (port 0: a free port), prints one JSON
// line {"url": ..., "cert": ...} on stdout once it serves, and exits when stdin
// closes or on SIGINT/SIGTERM, so that it never outlives the process that started it.
package main

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"io/ioutil"
	"log"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// reconfigNotifier makes the simulator (govmomi 0.24) do after a ReconfigVM what
// vSphere does and it does not: a key given again replaces the extraConfig value it
// had, a key given "" is removed, and PropertyCollector watchers are told of the new
// config.extraConfig, config.hardware.numCPU and .memoryMB, and the hot-add flags (vcsim
// appends every key given and tells watchers of none of these). Without it a test
// could not play a guest that writes guestinfo, nor see keys blanked.
type reconfigNotifier struct{}

func (reconfigNotifier) Reference() types.ManagedObjectReference {
	return types.ManagedObjectReference{Type: "QuantaReconfigNotifier", Value: "quanta-reconfig"}
}

func (reconfigNotifier) PutObject(mo.Reference) {}

func (reconfigNotifier) RemoveObject(types.ManagedObjectReference) {}

func (reconfigNotifier) UpdateObject(obj mo.Reference, changes []types.PropertyChange) {
	task, ok := obj.(*mo.Task)
	if !ok || task.Info.DescriptionId != "VirtualMachine.reconfigVm" || task.Info.Entity == nil {
		return
	}
	succeeded := false
	for _, change := range changes {
		if change.Name == "info.state" && change.Val == types.TaskInfoStateSuccess {
			succeeded = true
		}
	}
	if !succeeded {
		return
	}
	vm, ok := simulator.Map.Get(*task.Info.Entity).(*simulator.VirtualMachine)
	if !ok || vm.Config == nil {
		return
	}
	index := map[string]int{}
	var merged []types.BaseOptionValue
	for _, option := range vm.Config.ExtraConfig {
		value := option.GetOptionValue()
		if i, seen := index[value.Key]; seen {
			merged[i] = option
		} else {
			index[value.Key] = len(merged)
			merged = append(merged, option)
		}
	}
	kept := merged[:0]
	for _, option := range merged {
		if text, isText := option.GetOptionValue().Value.(string); !isText || text != "" {
			kept = append(kept, option)
		}
	}
	vm.Config.ExtraConfig = kept
	changed := []types.PropertyChange{
		{Name: "config.extraConfig", Val: kept},
		{Name: "config.hardware.numCPU", Val: vm.Config.Hardware.NumCPU},
		{Name: "config.hardware.memoryMB", Val: vm.Config.Hardware.MemoryMB},
	}
	if flag := vm.Config.CpuHotAddEnabled; flag != nil {
		changed = append(changed, types.PropertyChange{Name: "config.cpuHotAddEnabled", Val: *flag})
	}
	if flag := vm.Config.MemoryHotAddEnabled; flag != nil {
		changed = append(changed, types.PropertyChange{Name: "config.memoryHotAddEnabled", Val: *flag})
	}
	simulator.Map.Update(vm, changed)
}

func parseMethodDelay(spec string) (map[string]int, error) {
	delays := map[string]int{}
	if spec == "" {
		return delays, nil
	}
	for _, item := range strings.Split(spec, ",") {
		parts := strings.SplitN(item, "=", 2)
		if len(parts) != 2 {
			return nil, fmt.Errorf("bad method delay %q: use Method=milliseconds", item)
		}
		ms, err := strconv.Atoi(parts[1])
		if err != nil || ms < 0 {
			return nil, fmt.Errorf("bad method delay %q: %q is not milliseconds", item, parts[1])
		}
		delays[strings.TrimSpace(parts[0])] = ms
	}
	return delays, nil
}

// loopbackCertificate makes a self-signed P-256 certificate for 127.0.0.1, ::1 and
// localhost. The simulator's built-in one is RSA-1024, which OpenSSL at its default
// security level rejects as too weak, so a client that verifies TLS could not connect.
func loopbackCertificate() (tls.Certificate, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	template := x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "vcsim"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1"), net.IPv6loopback},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, &template, &template, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	pair, err := tls.X509KeyPair(certPEM, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}))
	return pair, certPEM, err
}

// simulatedGuest plays, with -guest, a guest OS with VMware Tools in every VM: -guest-boot
// after a power-on its tools run, it reports an address on each NIC in guest.net (the
// static one the network config in guestinfo.metadata gives the NIC's MAC, as cloud-init
// would set it, else one of 10.77.x.y, unique per VM and NIC, kept across power cycles),
// the first NIC's in guest.ipAddress, and,
// if the VM carries bootstrap data (guestinfo.userdata or guestinfo.ignition.config.data),
// it sets guestinfo.quanta.bootstrap=done as a guest that ran it would. A power-off stops
// its tools and drops the addresses, as on a real host. (It neither boots nor reads the
// user data.) guest.net lists the NICs the VM has: vcsim keeps an entry for a NIC removed
// by a reconfigure or a clone spec (govmomi 0.24), which the guest drops.
type simulatedGuest struct {
	boot time.Duration
	mu   sync.Mutex
	ips  map[string]string
}

func (*simulatedGuest) Reference() types.ManagedObjectReference {
	return types.ManagedObjectReference{Type: "QuantaSimulatedGuest", Value: "quanta-guest"}
}

func (*simulatedGuest) PutObject(mo.Reference) {}

func (*simulatedGuest) RemoveObject(types.ManagedObjectReference) {}

func (g *simulatedGuest) UpdateObject(obj mo.Reference, changes []types.PropertyChange) {
	if _, ok := obj.(*mo.VirtualMachine); !ok {
		return
	}
	for _, change := range changes {
		if change.Name != "runtime.powerState" {
			continue
		}
		vm, ok := simulator.Map.Get(obj.Reference()).(*simulator.VirtualMachine)
		if !ok {
			return
		}
		switch change.Val {
		case types.VirtualMachinePowerStatePoweredOn:
			go func() {
				time.Sleep(g.boot)
				simulator.Map.WithLock(vm, func() { g.up(vm) })
			}()
		case types.VirtualMachinePowerStatePoweredOff:
			g.down(vm) // inside the power-off call, which holds the VM's lock
		}
	}
}

func (g *simulatedGuest) address(vm *simulator.VirtualMachine, nic int) string {
	g.mu.Lock()
	defer g.mu.Unlock()
	key := vm.Self.Value
	if nic > 0 {
		key = fmt.Sprintf("%s/%d", key, nic)
	}
	ip, ok := g.ips[key]
	if !ok {
		n := len(g.ips)
		ip = fmt.Sprintf("10.77.%d.%d", n/250, n%250+2)
		g.ips[key] = ip
	}
	return ip
}

// presentNics is guest.net without the entries of NICs the VM no longer has (by MAC).
func presentNics(vm *simulator.VirtualMachine) []types.GuestNicInfo {
	macs := map[string]bool{}
	for _, device := range vm.Config.Hardware.Device {
		if card, ok := device.(types.BaseVirtualEthernetCard); ok {
			macs[strings.ToLower(card.GetVirtualEthernetCard().MacAddress)] = true
		}
	}
	var present []types.GuestNicInfo
	for _, nic := range vm.Guest.Net {
		if macs[strings.ToLower(nic.MacAddress)] {
			present = append(present, nic)
		}
	}
	return present
}

// staticAddresses reads the network config Quanta puts in the VM's guestinfo.metadata
// (agents/netconfig.py: cloud-init v2, one ethernets entry per NIC matched by
// macaddress, base64 JSON under "network"): MAC (lower case) -> its first address,
// without the prefix length. Nothing for metadata without one.
func staticAddresses(vm *simulator.VirtualMachine) map[string]string {
	options := map[string]string{}
	for _, option := range vm.Config.ExtraConfig {
		value := option.GetOptionValue()
		if text, ok := value.Value.(string); ok {
			options[value.Key] = text
		}
	}
	found := map[string]string{}
	raw := []byte(options["guestinfo.metadata"])
	if options["guestinfo.metadata.encoding"] == "base64" {
		decoded, err := base64.StdEncoding.DecodeString(string(raw))
		if err != nil {
			return found
		}
		raw = decoded
	}
	var metadata map[string]string
	if json.Unmarshal(raw, &metadata) != nil || metadata["network"] == "" {
		return found
	}
	network := []byte(metadata["network"])
	if metadata["network.encoding"] == "base64" {
		decoded, err := base64.StdEncoding.DecodeString(metadata["network"])
		if err != nil {
			return found
		}
		network = decoded
	}
	var config struct {
		Ethernets map[string]struct {
			Match     struct{ Macaddress string } `json:"match"`
			Addresses []string                    `json:"addresses"`
		} `json:"ethernets"`
	}
	if json.Unmarshal(network, &config) != nil {
		return found
	}
	for _, entry := range config.Ethernets {
		if len(entry.Addresses) > 0 && entry.Match.Macaddress != "" {
			found[strings.ToLower(entry.Match.Macaddress)] = strings.SplitN(entry.Addresses[0], "/", 2)[0]
		}
	}
	return found
}

func (g *simulatedGuest) up(vm *simulator.VirtualMachine) {
	if vm.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOn || vm.Config == nil {
		return // switched off (or gone) while it booted
	}
	vm.Guest.Net = presentNics(vm)
	static := staticAddresses(vm)
	primary := ""
	for i := range vm.Guest.Net {
		ip := static[strings.ToLower(vm.Guest.Net[i].MacAddress)]
		if ip == "" {
			ip = g.address(vm, i)
		}
		vm.Guest.Net[i].IpAddress = []string{ip}
		if i == 0 {
			primary = ip
		}
	}
	if primary == "" {
		primary = g.address(vm, 0)
	}
	changes := []types.PropertyChange{
		{Name: "guest.toolsRunningStatus", Val: string(types.VirtualMachineToolsRunningStatusGuestToolsRunning)},
		{Name: "guest.ipAddress", Val: primary},
		{Name: "guest.net", Val: vm.Guest.Net},
	}
	data, reported := false, false
	for _, option := range vm.Config.ExtraConfig {
		value := option.GetOptionValue()
		text, _ := value.Value.(string)
		switch value.Key {
		case "guestinfo.userdata", "guestinfo.ignition.config.data":
			data = data || text != ""
		case "guestinfo.quanta.bootstrap":
			reported = true
		}
	}
	if data && !reported {
		vm.Config.ExtraConfig = append(vm.Config.ExtraConfig,
			&types.OptionValue{Key: "guestinfo.quanta.bootstrap", Value: "done"})
		changes = append(changes, types.PropertyChange{Name: "config.extraConfig", Val: vm.Config.ExtraConfig})
	}
	simulator.Map.Update(vm, changes)
}

func (g *simulatedGuest) down(vm *simulator.VirtualMachine) {
	changes := []types.PropertyChange{
		{Name: "guest.toolsRunningStatus", Val: string(types.VirtualMachineToolsRunningStatusGuestToolsNotRunning)},
		{Name: "guest.ipAddress", Val: ""},
	}
	if len(vm.Guest.Net) > 0 {
		for i := range vm.Guest.Net {
			vm.Guest.Net[i].IpAddress = nil
		}
		changes = append(changes, types.PropertyChange{Name: "guest.net", Val: vm.Guest.Net})
	}
	simulator.Map.Update(vm, changes)
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to serve on (port 0: a free port)")
	mode := flag.String("mode", "esx", "esx (a standalone ESXi host) or vpx (a vCenter)")
	hosts := flag.Int("hosts", 1, "vpx: standalone hosts per datacenter")
	clusterHosts := flag.Int("cluster-hosts", 0, "vpx: hosts in one cluster (0: no cluster)")
	datastores := flag.Int("ds", 1, "local datastores, mounted on every host")
	vms := flag.Int("vm", 0, "VMs the model creates per host/pool (Quanta tests start from none)")
	delay := flag.Int("delay", 0, "milliseconds added to every SOAP call")
	methodDelay := flag.String("method-delay", "", "milliseconds per method, e.g. CreateVM_Task=200,PowerOnVM_Task=100")
	useTLS := flag.Bool("tls", true, "serve https (with a generated certificate)")
	certOut := flag.String("cert-out", "", "with -tls: write the server certificate (PEM) here")
	username := flag.String("username", "user", "the only accepted user name")
	password := flag.String("password", "pass", "its password")
	sessionIdle := flag.Duration("session-idle", 0, "expire sessions idle this long (0: never)")
	guest := flag.Bool("guest", false, "simulate a guest with tools in every VM (address, bootstrap report)")
	guestBoot := flag.Duration("guest-boot", 200*time.Millisecond, "with -guest: from power-on to tools and address")
	distributed := flag.Int("pg", 0, "vpx: distributed port groups (DC0_DVPG0...) on a switch every host is a member of")
	portgroups := flag.String("portgroups", "", "standard port groups every host reaches besides \"VM Network\", e.g. web,db")
	flag.Parse()

	delays, err := parseMethodDelay(*methodDelay)
	if err != nil {
		log.Fatal(err)
	}

	var model *simulator.Model
	switch *mode {
	case "esx":
		model = simulator.ESX()
	case "vpx":
		model = simulator.VPX()
		model.Host = *hosts
		model.ClusterHost = *clusterHosts
		if *clusterHosts == 0 {
			model.Cluster = 0
		}
		model.Portgroup = *distributed
	default:
		log.Fatalf("unknown -mode %q: esx or vpx", *mode)
	}
	model.Datastore = *datastores
	model.Machine = *vms
	model.Autostart = false
	model.DelayConfig = simulator.DelayConfig{Delay: *delay, MethodDelay: delays}
	simulator.SessionIdleTimeout = *sessionIdle

	if err := model.Create(); err != nil {
		log.Fatal(err)
	}
	if *portgroups != "" {
		addPortgroups(strings.Split(*portgroups, ","))
	}
	simulator.Map.AddHandler(reconfigNotifier{})
	if *guest {
		simulator.Map.AddHandler(&simulatedGuest{boot: *guestBoot, ips: map[string]string{}})
	}
	defer model.Remove()

	model.Service.Listen = &url.URL{Host: *listen, User: url.UserPassword(*username, *password)}
	cert := ""
	if *useTLS {
		pair, certPEM, err := loopbackCertificate()
		if err != nil {
			log.Fatal(err)
		}
		model.Service.TLS = &tls.Config{Certificates: []tls.Certificate{pair}}
		if *certOut != "" {
			if err := ioutil.WriteFile(*certOut, certPEM, 0o644); err != nil {
				log.Fatal(err)
			}
			cert = *certOut
		}
	}
	server := model.Service.NewServer()
	defer server.Close()

	served := server.URL
	served.User = url.UserPassword(*username, *password)
	line, _ := json.Marshal(map[string]string{"url": served.String(), "cert": cert})
	fmt.Println(string(line))
	os.Stdout.Sync()

	stdinClosed := make(chan struct{})
	go func() {
		_, _ = io.Copy(ioutil.Discard, bufio.NewReader(os.Stdin))
		close(stdinClosed)
	}()
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	start := time.Now()
	select {
	case <-stdinClosed:
	case <-signals:
	}
	log.Printf("vcsim: stopping after %s", time.Since(start).Round(time.Millisecond))
}

// addPortgroups adds standard port groups (Networks) to every datacenter, reached by
// every host. The simulator's HostNetworkSystem.AddPortGroup puts the network in the
// inventory but not in host.network, which is where a driver looks for what a host reaches.
func addPortgroups(names []string) {
	for _, entity := range simulator.Map.All("Datacenter") {
		dc := entity.(*simulator.Datacenter)
		folder := simulator.Map.Get(dc.NetworkFolder).(*simulator.Folder)
		for _, name := range names {
			network := &mo.Network{}
			network.Name = name
			simulator.Map.PutEntity(folder, network)
			network.Summary = &types.NetworkSummary{Network: &network.Self, Name: name, Accessible: true}
			simulator.Map.AppendReference(folder, &folder.ChildEntity, network.Self)
			simulator.Map.AppendReference(dc, &dc.Network, network.Self)
			for _, h := range simulator.Map.All("HostSystem") {
				host := h.(*simulator.HostSystem)
				simulator.Map.AppendReference(host, &host.Network, network.Self)
			}
		}
	}
}
