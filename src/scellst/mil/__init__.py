"""Stage 3, multiple-instance learning: spots as bags of cells, a per-cell model trained on
them, and per-cell prediction.

Reads the spots (shapes + counts table from :mod:`scellst.io`), the cells and their embedding
table; :func:`~scellst.pp.assign_cells` writes ``obs["spot"]`` of the cells table,
:func:`~scellst.tl.fit` returns a :class:`~scellst.tl.MILModel` (saved to a directory, never
into the SpatialData object), :func:`~scellst.tl.predict` writes the table ``sst_expression``
(:data:`~scellst.constants.EXPRESSION_KEY`): cells x genes, linked to the cell shapes.

Modules:

- ``assign``: cell -> spot (centroid inside the spot disk or the square bin);
- ``bins``: square-bin geometry of Visium HD (bin grid, cell x bin overlap fractions,
  coarser bins), also used by the HD reader and the synthetic HD slides;
- ``hd``: the square bins of a slide in the cells' frame: centroid assignment, overlap
  weights (overlap-aware pooling), coarsened bins;
- ``spots``: a slide's bags (the cells of each spot, or weighted (cell, bin) pairs, their
  embeddings) and spot targets;
- ``genes``: gene selection (named list, ``"hvg:N"``, ``"svg:N"``);
- ``options``: the training settings and their defaults (read by ``fit`` and the trainer);
- ``training``, ``split``, ``losses``, ``pooling``, ``mlp``: the trainer, validation splits,
  spot losses, cell -> spot pooling (weighted with overlap-aware bags) and the per-cell
  network;
- ``ridge``: the closed-form ridge on spot-mean embeddings as a per-cell linear model (the
  ensemble's linear member);
- ``ood``: distance of cell embeddings to the training cells' (out-of-distribution flag);
- ``model``: :class:`~scellst.tl.MILModel` (predict, save, load);
- ``fit``, ``predict``: the public entry points;
- ``evaluate``, ``crossval``: per-gene scores at spot or cell level, leave-one-slide-out;
- ``celltypes``: :func:`~scellst.tl.score_cell_types`, marker-signature scores and a type
  for every predicted cell.

Importing this package imports none of its modules (and never torch).
"""
