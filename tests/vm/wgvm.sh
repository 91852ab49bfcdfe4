#!/bin/bash
# wgvm.sh — run a command inside a throw-away QEMU VM that boots Debian's cloud
# kernel (which has WireGuard) and sees the host root filesystem read-only over
# virtiofs, with a tmpfs overlay on top and the wireguard + veth modules loaded.
# The command's exit code becomes ours (125: the VM gave no exit code).
#
# usage: tests/vm/wgvm.sh [--] command [args...]     (as root)
#
# The kernel is fetched on first use: `apt-get download` of the package that
# linux-image-cloud-amd64 points at, `dpkg-deb -x` into the cache dir (no
# install). Debian packages needed: qemu-system-x86 busybox-static cpio kmod.
#
# env: EDGEWARD_KERNEL_DIR  kernel cache (default /var/cache/edgeward/kernel)
#      WGVM_MEM=1024 WGVM_SMP=2 WGVM_TIMEOUT=240 WGVM_ACCEL=tcg|kvm
#      WGVM_KARGS (default 'quiet loglevel=3')
# Inside the VM the command runs with EDGEWARD_WGVM=1 in the current directory.
set -euo pipefail
[ "${1:-}" = "--" ] && shift
[ $# -gt 0 ] || { echo "usage: $0 [--] command [args...]" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "wgvm: needs root (virtiofsd, apt-get download)" >&2; exit 2; }
KDIR=${EDGEWARD_KERNEL_DIR:-/var/cache/edgeward/kernel}
VIRTIOFSD=/usr/lib/qemu/virtiofsd
for bin in qemu-system-x86_64 "$VIRTIOFSD" /bin/busybox cpio modprobe depmod; do
  command -v "$bin" >/dev/null || [ -x "$bin" ] || {
    echo "wgvm: $bin missing (Debian: qemu-system-x86 busybox-static cpio kmod)" >&2; exit 2; }
done

# ---- the kernel: fetched once into the cache, under a lock ----------------
fetch_kernel() {
  local pkg tmp
  pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}')
  if [ -z "$pkg" ]; then
    apt-get update -qq
    pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
  fi
  [ -n "$pkg" ] || { echo "wgvm: cannot resolve linux-image-cloud-amd64" >&2; return 1; }
  echo "wgvm: fetching kernel package $pkg into $KDIR" >&2
  tmp=$(mktemp -d "$(dirname "$KDIR")/.kernel.XXXXXX")
  (cd "$tmp" && apt-get download -qq "$pkg" 2>/dev/null) || { rm -rf "$tmp"; return 1; }
  dpkg-deb -x "$tmp"/*.deb "$tmp/root"
  rm -f "$tmp"/*.deb
  local ver; ver=$(ls "$tmp/root/lib/modules")
  depmod -b "$tmp/root" "$ver"
  rm -rf "$KDIR"; mv "$tmp/root" "$KDIR"; rmdir "$tmp"
}
mkdir -p "$(dirname "$KDIR")"
exec 9>"$(dirname "$KDIR")/.kernel.lock"
flock -w 600 9
ls "$KDIR"/boot/vmlinuz-* >/dev/null 2>&1 || fetch_kernel
flock -u 9
VMLINUZ=$(ls "$KDIR"/boot/vmlinuz-* | head -1)
KVER=${VMLINUZ##*/vmlinuz-}

WORK=$(mktemp -d /tmp/wgvm.XXXXXX)
VFSD=""
cleanup() { [ -n "$VFSD" ] && kill "$VFSD" 2>/dev/null; sleep 0.2; rm -rf "$WORK"; }
trap cleanup EXIT

# ---- initramfs: static busybox + the modules, in dependency order ---------
IR=$WORK/ir; mkdir -p $IR/bin $IR/mods $IR/proc $IR/sys $IR/dev $IR/lower $IR/upper $IR/newroot
cp /bin/busybox $IR/bin/busybox
for a in sh mount mkdir insmod switch_root cat echo; do ln -s busybox $IR/bin/$a; done
for m in virtio_pci virtiofs overlay wireguard veth; do
  modprobe -d "$KDIR" -S "$KVER" --show-depends $m | awk '$1=="insmod"{print $2}'
done | awk '!seen[$0]++' | while read -r ko; do
  cp "$ko" $IR/mods/; basename "$ko" >> $IR/mods/order
done
cat > $IR/init <<EOF
#!/bin/sh
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in \$(cat /mods/order); do insmod /mods/\$m || echo "wgvm: insmod \$m failed"; done
mount -t virtiofs -o ro hostroot /lower || echo "wgvm: virtiofs mount failed"
mount -t tmpfs -o size=512m tmpfs /upper; mkdir -p /upper/u /upper/w
mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w /newroot || echo "wgvm: overlay failed"
exec switch_root /newroot /bin/bash $WORK/stage2.sh
EOF
chmod +x $IR/init
(cd $IR && find . | cpio -o -H newc --quiet | gzip -1) > $WORK/initramfs.gz

# ---- stage 2: runs in the host root as seen through the overlay -----------
CMDQ=$(printf '%q ' "$@")
cat > $WORK/stage2.sh <<EOF
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm; mount -t devpts devpts /dev/pts; mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
ip link set lo up
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export EDGEWARD_WGVM=1 HOME=/root
cd $(printf '%q' "$PWD") 2>/dev/null || cd /
$CMDQ
rc=\$?
# let the serial console drain first: the power-off printk must not land
# inside the exit-code line
sleep 1; echo; echo "WGVM_EXIT=\$rc"; sleep 1
echo o > /proc/sysrq-trigger; sleep 10
EOF

case ${WGVM_ACCEL:-tcg} in
  kvm) ACC="-accel kvm -cpu host" ;;
  *)   ACC="-accel tcg,thread=multi -cpu max" ;;
esac
MEM=${WGVM_MEM:-1024}
# qemu 7.2's C virtiofsd has no read-only export: the guest mounts it ro.
$VIRTIOFSD --socket-path=$WORK/vfs.sock -o source=/ -o cache=always -o sandbox=chroot \
  -o log_level=err > $WORK/virtiofsd.log 2>&1 &
VFSD=$!
for _ in $(seq 100); do [ -S $WORK/vfs.sock ] && break; sleep 0.05; done
[ -S $WORK/vfs.sock ] || { echo "wgvm: virtiofsd did not start: $(cat $WORK/virtiofsd.log)" >&2; exit 125; }

set +e
timeout "${WGVM_TIMEOUT:-240}" qemu-system-x86_64 $ACC -M q35 -smp "${WGVM_SMP:-2}" -m "$MEM" \
  -nodefaults -no-user-config -display none -serial stdio -no-reboot \
  -kernel "$VMLINUZ" -initrd $WORK/initramfs.gz \
  -append "console=ttyS0 ${WGVM_KARGS:-quiet loglevel=3} panic=-1 rdinit=/init" \
  -chardev socket,id=vfs,path=$WORK/vfs.sock -device vhost-user-fs-pci,chardev=vfs,tag=hostroot \
  -object memory-backend-memfd,id=mem,size=${MEM}M,share=on -machine memory-backend=mem \
  < /dev/null | tr -d '\r' | tee $WORK/console.log
rc=$(sed -n 's/^WGVM_EXIT=\([0-9][0-9]*\).*/\1/p' $WORK/console.log | tail -1)
exit "${rc:-125}"
