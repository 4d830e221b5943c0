// demo IdP placeholder
