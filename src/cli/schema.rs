pub fn schema_text() -> String {
    String::new()
}
