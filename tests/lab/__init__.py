"""NAT lab tests (root): every test here is marked ``lab``."""
