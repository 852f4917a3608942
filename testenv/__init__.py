"""Test world for minimarket.backup: throwaway PostgreSQL, seed data, images, compose stack."""
