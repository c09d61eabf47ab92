"""lmpref: fine-tune language models from human preferences (Ziegler et al. 2019).

Kept free of heavy imports: `import lmpref` must not load torch (the label server relies on it).
"""

__version__ = "0.1.0"
