"""DICOM audit messages (PS3.15 Annex A.5) to syslog: the node's security-relevant events for an audit
record repository, as IHE ATNA (ITI-20), dcm4chee and Orthanc's audit plugins send them.

* :mod:`spectnode.audit.messages`: the ``AuditMessage`` XML of each event;
* :mod:`spectnode.audit.syslog`: RFC 5424 messages over UDP, TCP or TLS, from a bounded queue and one
  sender thread, so that a dead syslog server never holds up or stops the node;
* :mod:`spectnode.audit.trail`: :class:`NodeAudit`, which the node's parts tell what happened.

Off unless ``audit.enabled`` (:class:`spectnode.config.AuditConfig`).
"""

from spectnode.audit.trail import NodeAudit

__all__ = ["NodeAudit"]
