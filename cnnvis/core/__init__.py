"""What every wing needs, and nothing above it: errors, atomic files, images in and out, progress,
the convention for a module's output, and grids shown inline in notebooks.

Modules: :mod:`~cnnvis.core.errors`, :mod:`~cnnvis.core.files`, :mod:`~cnnvis.core.io`,
:mod:`~cnnvis.core.progress`, :mod:`~cnnvis.core.outputs`, :mod:`~cnnvis.core.display`.
"""
