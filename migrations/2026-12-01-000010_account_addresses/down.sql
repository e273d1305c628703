DROP TABLE account_addresses;
