"""Ingestion: extracting a day of orders from the shop's database into the lake."""
