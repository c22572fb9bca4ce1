"""Stage 1, segmentation: every nucleus of the H&E as a polygon.

Reads an image element (RGB, with a ``Scale`` to ``"microns"``) and writes the shapes element
``sst_cells`` (:data:`~scellst.constants.CELLS_KEY`) with its table ``sst_cells_table``
(ids, centroids, areas, provenance in ``uns["scellst"]["segmentation"]``). Public face:
:func:`scellst.pp.segment`, :func:`scellst.pp.rasterize_cells`, :class:`scellst.pp.WatershedParams`,
:class:`scellst.pp.NucleusSegmenter`, :func:`scellst.pp.train_segmenter`,
:class:`scellst.pp.CellposeSegmenter`; scores: :func:`scellst.tl.segmentation_metrics`.

Modules:

- ``segment``: the public entry point; tiles the image, runs a segmenter on each, keeps the
  nuclei each tile owns, writes the cells;
- ``watershed``, ``learned``, ``cellpose``: the segmenters (a callable ``(rgb tile, µm/px) ->
  labels`` with a ``max_diameter_um`` for the tile overlap); a new segmenter goes next to them;
- ``nucleus_net``, ``nucleus_training``, ``self_training``: the learned segmenter's network,
  windowed inference, training loop and pseudo-labels on unannotated slides (torch); its
  shipped weights are in ``weights/``; ``resize``: images and label images to and from its
  working resolution;
- ``tiles``, ``checkpoint``: the tile grid, bounded-memory execution (threads or
  dask.distributed) and per-tile resume;
- ``polygons``, ``cells``, ``rasterize``: label image -> polygons and measurements -> SpatialData
  elements, and back to a label image;
- ``tissue``: the whole-slide tissue mask (low resolution) that flags cells off the tissue;
- ``stains``: H&E colour deconvolution (also used by the embedding stage);
- ``metrics``: F1, AJI, PQ of label images against ground truth.

Importing this package imports none of its modules (and never torch).
"""
