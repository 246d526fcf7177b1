"""Money: the ledger, the per-minute meter, pricing, and the payment gateways."""
