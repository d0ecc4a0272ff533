"""The price data: sources (yfinance, sample, CSV), fetch planning, the store, validation."""
