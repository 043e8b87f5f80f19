"""Network defences of the storage SCP: who may connect, how many, for how long, over what.

* :mod:`spectnode.net.access`: the IP/CIDR allow-list and the connection
  limits (in total and per peer address), checked when a TCP connection is
  accepted, before a byte of it is read.
* :mod:`spectnode.net.server`: pynetdicom's association server with those
  checks, deadlines on every PDU read (so a peer that starts a PDU and goes
  quiet is cut off), and the TLS handshake moved off the accept loop.
* :mod:`spectnode.net.tls`: DICOM TLS (PS3.15 Annex B) server and client contexts.
* :mod:`spectnode.net.inflate`: inflating a deflated dataset with a size limit
  that is checked while inflating.
"""
