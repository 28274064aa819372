"""Operations: secrets (Vault), metrics, health, tracing, logging, model card and registration."""
