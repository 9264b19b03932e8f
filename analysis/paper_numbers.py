"""The MEGABYTE paper's numbers (Yu et al. 2023), as ../shared/reference/PAPERS.md quotes them.

``PAPER[study][row][column]``: one entry per ``bytelab study`` (experiments/sweeps/paper/), its rows
and columns named as in the paper's table. Bits per byte (bits per dim for images) unless a column
says otherwise; lower is better everywhere.
"""

from __future__ import annotations

PAPER: dict[str, dict[str, dict[str, float]]] = {
    "table2_text": {  # compute- and data-controlled, 80B bytes each
        "Transformer": {"PG-19": 1.057, "Stories": 1.064, "Books": 1.097, "arXiv": 0.816, "Code": 0.575},
        "PerceiverAR": {"PG-19": 1.104, "Stories": 1.070, "Books": 1.104, "arXiv": 0.791, "Code": 0.546},
        "MEGABYTE": {"PG-19": 1.000, "Stories": 0.978, "Books": 1.007, "arXiv": 0.678, "Code": 0.411},
    },
    "table5_images": {  # bits per dim at equal compute and data
        "Transformer": {"Image64": 3.62, "Image256": 3.801, "Image640": 2.847},
        "PerceiverAR": {"Image64": 3.55, "Image256": 3.373, "Image640": 2.345},
        "MEGABYTE": {"Image64": 3.52, "Image256": 3.158, "Image640": 2.282},
    },
    "audio": {  # section 8
        "Transformer": {"Audio": 3.567},
        "PerceiverAR": {"Audio": 3.543},
        "MEGABYTE": {"Audio": 3.477},
    },
    "table10_ablations": {  # same compute per column
        "MEGABYTE": {"arXiv": 0.6871, "Audio": 3.477, "ImageNet256": 3.158},
        "w/o local model": {"arXiv": 1.263, "Audio": 5.955, "ImageNet256": 4.768},
        "w/o global model": {"arXiv": 1.373, "Audio": 3.659, "ImageNet256": 3.181},
        "w/o cross-patch attention": {"arXiv": 0.6781, "Audio": 3.481, "ImageNet256": 3.259},
        "w/ CNN encoder": {"arXiv": 0.6871, "Audio": 3.475, "ImageNet256": 3.155},
    },
    "table11_inference": {  # PG-19 test
        "basic": {"PG-19": 0.9079},
        "sliding window": {"PG-19": 0.8918},
        "strided": {"PG-19": 0.8926},
        "sliding window + strided": {"PG-19": 0.8751},
    },
    "table12_patch_size": {  # Image256
        "P=48": {"Image256": 3.178},
        "P=192": {"Image256": 3.158},
        "P=768": {"Image256": 3.186},
    },
    "table13_split": {  # PG-19, global / local parameters
        "350M / 290M": {"PG-19": 1.014},
        "760M / 262M": {"PG-19": 1.002},
        "1.3B / 218M": {"PG-19": 0.991},
    },
    "table16_scan_order": {  # ImageNet256
        "MEGABYTE, patch scan": {"Image256": 3.158},
        "MEGABYTE, raster scan": {"Image256": 3.428},
        "PerceiverAR, patch scan": {"Image256": 3.373},
        "PerceiverAR, raster scan": {"Image256": 3.552},
    },
    "table9_generation": {  # 8192 bytes; seconds, and bits per byte on PG-19
        "Transformer 350M": {"seconds": 132.0, "PG-19": 1.064},
        "MEGABYTE 1.3B + 218M": {"seconds": 93.0, "PG-19": 0.991},
    },
}
