//! Prints the JSON Schema of the profile event, the source of `schemas/profile-event.schema.json`.

#[allow(clippy::print_stdout)]
fn main() {
    print!("{}", statecast_events::json_schema());
}
