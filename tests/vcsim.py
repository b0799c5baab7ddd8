"""vcsim (govmomi's vSphere simulator) for tests and benchmarks: one process per
:class:`Vcsim`, on a free loopback port, always stopped.

The binary comes from ``scripts/build-vcsim`` (built on first use, cached outside
the repository). vcsim crashes on some bad input, so tests start a fresh one per
module. Also gives an independent pyvmomi view of the simulator (:meth:`Vcsim.quanta_vms`)
that shares nothing with the driver under test.
"""

from __future__ import annotations

import json
import pathlib
import select
import ssl
import subprocess
import tempfile
import time
from dataclasses import dataclass
from urllib.parse import urlparse

from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim, vmodl

from agents.drivers.esxi import UID_KEY, EsxiConfig

ROOT = pathlib.Path(__file__).resolve().parent.parent


def vcsim_binary() -> str:
    """The simulator binary, built from Debian's govmomi if not cached yet."""
    out = subprocess.run([str(ROOT / "scripts/build-vcsim")], check=True, capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1]


@dataclass(frozen=True)
class QuantaVm:
    name: str
    uid: str
    power: str
    host: str


class Vcsim:
    def __init__(self, *, mode: str = "esx", hosts: int = 1, datastores: int = 1, delay_ms: int = 0,
                 method_delay: dict[str, int] | None = None, session_idle_s: float = 0.0,
                 guest_boot_s: float | None = None, distributed_port_groups: int = 0,
                 port_groups: tuple[str, ...] = ()):
        """``guest_boot_s``: simulate a guest with tools in every VM, up that long after a
        power-on (tests/vcsim/main.go ``simulatedGuest``); None: no guest (tests play it).
        ``distributed_port_groups`` (vpx): DC0_DVPG0... on a switch of every host;
        ``port_groups``: standard port groups every host reaches besides "VM Network"."""
        self.mode = mode
        self.argv = [vcsim_binary(), "-listen", "127.0.0.1:0", "-mode", mode, "-hosts", str(hosts),
                     "-ds", str(datastores), "-delay", str(delay_ms),
                     "-method-delay", ",".join(f"{k}={v}" for k, v in (method_delay or {}).items()),
                     "-session-idle", f"{session_idle_s}s"]
        if guest_boot_s is not None:
            self.argv += ["-guest", "-guest-boot", f"{guest_boot_s}s"]
        if distributed_port_groups:
            self.argv += ["-pg", str(distributed_port_groups)]
        if port_groups:
            self.argv += ["-portgroups", ",".join(port_groups)]
        self._tmp = tempfile.TemporaryDirectory(prefix="quanta-vcsim-")
        self.cert = str(pathlib.Path(self._tmp.name) / "cert.pem")
        self.log_path = pathlib.Path(self._tmp.name) / "vcsim.log"
        self.process: subprocess.Popen | None = None
        self.url = self.user = self.password = ""

    def start(self, timeout: float = 30.0) -> Vcsim:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([*self.argv, "-cert-out", self.cert], stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=log)
        try:
            ready, _, _ = select.select([self.process.stdout], [], [], timeout)
            line = self.process.stdout.readline() if ready else b""
            if not line:
                raise RuntimeError(f"vcsim did not start within {timeout}s: {self.log_path.read_text()[-2000:]}")
            served = urlparse(json.loads(line)["url"])
        except BaseException:
            self.stop()
            raise
        self.user, self.password = served.username, served.password
        self.url = f"{served.scheme}://{served.hostname}:{served.port}{served.path}"
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop vcsim (closing its stdin ends it; SIGKILL if it does not). Idempotent."""
        if self.process is None:
            return
        if self.process.poll() is None:
            try:
                self.process.stdin.close()
                self.process.wait(timeout)
            except (subprocess.TimeoutExpired, OSError):
                self.process.kill()
                self.process.wait(timeout)
        self.process.stdout.close()
        self.process = None

    def cleanup(self) -> None:
        self.stop()
        self._tmp.cleanup()

    def __enter__(self) -> Vcsim:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()

    def config(self, **overrides) -> EsxiConfig:
        """An EsxiConfig for this simulator, verifying TLS against its certificate."""
        settings = dict(url=self.url, user=self.user, password=self.password, verify_tls=True, ca_file=self.cert,
                        retry_base_s=0.01)
        settings.update(overrides)
        return EsxiConfig(**settings)

    def agent_args(self, *, host_id_prefix: str = "") -> list[str]:
        """``quanta agent`` flags that point it at this simulator (password through the environment)."""
        args = ["--driver", "esxi", "--esxi-url", self.url, "--esxi-user", self.user,
                "--esxi-ca-file", self.cert]
        if host_id_prefix:
            args += ["--esxi-host-id-prefix", host_id_prefix]
        return args

    # --- an independent pyvmomi view ------------------------------------------------

    def connect(self):
        u = urlparse(self.url)
        context = ssl.create_default_context(cafile=self.cert)
        return SmartConnect(host=u.hostname, port=u.port, user=self.user, pwd=self.password, sslContext=context)

    def _vms(self, si) -> list:
        content = si.RetrieveContent()
        view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
        try:
            return list(view.view)
        finally:
            view.Destroy()

    def quanta_vms(self) -> list[QuantaVm]:
        """Every VM that carries a Quanta id, read afresh (one session, then logged out)."""
        si = self.connect()
        try:
            found = []
            for vm in self._vms(si):
                uid = next((o.value for o in vm.config.extraConfig or () if o.key == UID_KEY), "")
                if uid:
                    found.append(QuantaVm(vm.name, uid, str(vm.runtime.powerState), vm.runtime.host.name))
            return found
        finally:
            Disconnect(si)

    def _quanta_vm(self, si, uid: str):
        for vm in self._vms(si):
            if any(o.key == UID_KEY and o.value == uid for o in vm.config.extraConfig or ()):
                return vm
        raise LookupError(f"no VM with Quanta id {uid}")

    def extra_config(self, uid: str) -> dict[str, str]:
        """The extraConfig of the VM with Quanta id ``uid``, read afresh through a
        PropertyCollector of its own (one session, then logged out)."""
        si = self.connect()
        try:
            vm = self._quanta_vm(si, uid)
            spec = vmodl.query.PropertyCollector.FilterSpec(
                objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=vm, skip=False)],
                propSet=[vmodl.query.PropertyCollector.PropertySpec(type=vim.VirtualMachine,
                                                                   pathSet=["config.extraConfig"])])
            (found,) = si.RetrieveContent().propertyCollector.RetrieveContents([spec])
            return {o.key: str(o.value) for p in found.propSet for o in p.val}
        finally:
            Disconnect(si)

    def devices(self, uid: str) -> list:
        """The devices of the VM with Quanta id ``uid``, read afresh, in key order."""
        si = self.connect()
        try:
            return sorted(self._quanta_vm(si, uid).config.hardware.device, key=lambda d: d.key)
        finally:
            Disconnect(si)

    def disk_holders(self, path: str) -> list[str]:
        """The Quanta ids of the VMs that have the virtual disk at datastore path ``path``
        among their devices (any host), read afresh, sorted."""
        si = self.connect()
        try:
            found = []
            for vm in self._vms(si):
                uid = next((o.value for o in vm.config.extraConfig or () if o.key == UID_KEY), "")
                if any(isinstance(d, vim.vm.device.VirtualDisk) and getattr(d.backing, "fileName", None) == path
                       for d in vm.config.hardware.device):
                    found.append(uid or vm.name)
            return sorted(found)
        finally:
            Disconnect(si)

    def disk_exists(self, path: str) -> bool:
        """Whether the virtual disk at datastore path ``path`` exists, asked afresh."""
        si = self.connect()
        try:
            content = si.RetrieveContent()
            try:
                content.virtualDiskManager.QueryVirtualDiskUuid(path, content.rootFolder.childEntity[0])
                return True
            except vim.fault.FileNotFound:
                return False
        finally:
            Disconnect(si)

    def reconfigure(self, uid: str, extra: dict[str, str] | None = None, **config) -> None:
        """ReconfigVM_Task on the VM with Quanta id ``uid``, as someone outside Quanta
        would, or as its guest would (vcsim: ``SET.guest.ipAddress``, ``SET.guest.toolsRunningStatus``
        set guest properties; ``guestinfo.*`` keys stand for what the guest writes)."""
        si = self.connect()
        try:
            vm = self._quanta_vm(si, uid)
            options = [vim.option.OptionValue(key=k, value=v) for k, v in (extra or {}).items()]
            _wait(vm.ReconfigVM_Task(vim.vm.ConfigSpec(extraConfig=options, **config)))
        finally:
            Disconnect(si)

    def make_image(self, image: str = "ubuntu", *, prefix: str = "quanta-image-", datastore: str | None = None,
                   snapshot: bool = True, power_on: bool = False, nic: bool = False, host: str | None = None) -> None:
        """Register an image: a small VM with a disk (on ``datastore``, default the first)
        and a snapshot, on ``host`` (default the first); ``nic``: with a vmxnet3 NIC on
        "VM Network" (which clones copy, and whose guest.net entry ``SET.guest.ipAddress``
        fills). vcsim's CloneVM puts a clone on its source's host, whatever the clone
        spec says: a host's VMs come from an image on that host."""
        si = self.connect()
        try:
            content = si.RetrieveContent()
            datacenter = content.rootFolder.childEntity[0]
            host_view = content.viewManager.CreateContainerView(content.rootFolder, [vim.HostSystem], True)
            host_mo = next(h for h in host_view.view if host is None or h.name == host)
            host_view.Destroy()
            ds = datastore or host_mo.datastore[0].name
            disk = vim.vm.device.VirtualDisk(
                key=-2, controllerKey=-1, unitNumber=0, capacityInKB=1024 * 1024,
                backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(diskMode="persistent", fileName=f"[{ds}]"))
            config = vim.vm.ConfigSpec(
                name=f"{prefix}{image}", guestId="otherGuest64", numCPUs=1, memoryMB=512,
                files=vim.vm.FileInfo(vmPathName=f"[{ds}]"),
                deviceChange=[
                    vim.vm.device.VirtualDeviceSpec(operation="add", device=vim.vm.device.ParaVirtualSCSIController(
                        key=-1, busNumber=0, sharedBus="noSharing")),
                    vim.vm.device.VirtualDeviceSpec(operation="add", fileOperation="create", device=disk),
                ])
            if nic:
                card = vim.vm.device.VirtualVmxnet3(
                    key=-3, backing=vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(deviceName="VM Network"))
                config.deviceChange.append(vim.vm.device.VirtualDeviceSpec(operation="add", device=card))
            vm = _wait(datacenter.vmFolder.CreateVM_Task(config, host_mo.parent.resourcePool, host_mo))
            if snapshot:
                _wait(vm.CreateSnapshot_Task("quanta-base", "image base", False, False))
            if power_on:
                _wait(vm.PowerOnVM_Task())
        finally:
            Disconnect(si)


def _wait(task, timeout: float = 30.0):
    """Wait for a vcsim task (they complete inside the call; this confirms and raises its fault)."""
    deadline = time.monotonic() + timeout
    while task.info.state not in ("success", "error"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"task {task} not done within {timeout}s")
        time.sleep(0.01)
    if task.info.state == "error":
        raise task.info.error
    return task.info.result
