"""Operations: metrics, structured logs with masking, MQTT events."""
