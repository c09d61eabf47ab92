"""Other tools' data formats, read into and written from lmpref's own records. Imports only the base
modules (records, io, config) and `datasets`: never torch or the ML rooms."""
