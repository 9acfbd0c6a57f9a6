//! Prints our extracted text of one PDF (a debugging aid).
//!
//! ```text
//! cargo run -p pdf-parser --example dump -- FILE.pdf
//! ```

fn main() {
    let path = std::env::args().nth(1).expect("usage: dump FILE.pdf");
    let bytes = std::fs::read(&path).expect("read the PDF");
    match pdf_parser::extract_pdf(&bytes, &pdf_parser::Limits::default()) {
        Ok(x) => {
            println!("{:?}", x.metadata);
            println!("{}", x.full_text());
        }
        Err(e) => println!("error: {e}"),
    }
}
