"""Where recordings live: the LMDB store, export directories, and the recording's encoding. The only package that imports lmdb."""
