"""Workload identity, as pilot-agent does it: a key and CSR made here, the chain from istiod's CA
(`IstioCertificateService/CreateCertificate`), rotated at half its lifetime.

certs.py is pure (identity, CSR, chain checks, rotation timing: time and randomness are passed in);
ca_client.py is the gRPC edge; workload.py keeps the certificate current and writes it for APISIX.
"""
