"""Test support, not shipped in the wheel or the images: an istiod-like xDS generator (`istiogen`) and an ADS
server (`ads_server`) for the tests, examples and benchmarks of a repository checkout."""
