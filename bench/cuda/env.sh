# Sourced by the GPU scripts: NVLink multicast off, and the CUDA 13 libraries findable by their sonames even where
# only the pip wheels of PyTorch's image carry them (nvidia/cu13/lib).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
for soname in libnvrtc.so.13 libcublasLt.so.13 libnccl.so.2; do
  if ! ldconfig -p | grep -q "$soname"; then
    dir=$(python3 - "$soname" <<'PY'
import glob, os, site, sys
roots = site.getsitepackages() + [site.getusersitepackages()]
hits = [p for r in roots for p in glob.glob(os.path.join(r, "nvidia", "**", sys.argv[1]), recursive=True)]
print(os.path.dirname(hits[0]) if hits else "")
PY
)
    [ -n "$dir" ] && export LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  fi
done
